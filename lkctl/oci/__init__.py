"""OCI images: references, the local image-layout store, and (later) the registry client."""
