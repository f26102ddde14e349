"""The OCI source and registry client against Debian's docker-registry (distribution 2.8) on loopback:
anonymous, htpasswd (basic auth) and token auth (a bearer-token service we run, signing ES256 JWTs the way
distribution's `auth.token` expects), artifacts pushed with our own client and read back by skopeo too."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from lkctl.errors import ImageError
from lkctl.http import ChecksumMismatch
from lkctl.http.client import RetryPolicy
from lkctl.installed import pull_image, read_installed
from lkctl.oci.registry import Credentials, Registry, RegistryAuthError, RegistryNotFound, credentials_for
from lkctl.sources import Platform, SourceNotFound
from lkctl.sources.oci import ARTIFACT_TYPE, TITLE_ANNOTATION, OciSource, publish_artifact
from tests.integration._loopback import (
    Reg,
    Request,
    docker_registry,
    json_response,
    require,
    route_server,
)

pytestmark = pytest.mark.integration

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
NO_WAIT = RetryPolicy(attempts=2, sleep=lambda s: None)


def htpasswd_auth(work: Path, user: str, password: str) -> dict[str, object]:
    import bcrypt  # paramiko's dependency; the registry only accepts bcrypt entries

    work.mkdir(parents=True, exist_ok=True)
    path = work / "htpasswd"
    path.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    return {"htpasswd": {"realm": "lkctl-test", "path": str(path)}}


def image(n_kib: int, seed: int = 0) -> bytes:
    return b"QFI\xfb" + hashlib.sha256(bytes([seed])).digest() * (n_kib * 32)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Reg]:
    with docker_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def no_docker_creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv("LKCTL_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("LKCTL_REGISTRY_PASSWORD", raising=False)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "publish" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.usefixtures("no_docker_creds")
def test_artifact_pushed_with_our_client_is_pulled_and_installed(registry: Reg, tmp_path: Path) -> None:
    data = image(512)
    with Registry(registry.host, retry=NO_WAIT) as reg:
        for version in ("1.2.0", "1.10.0", "latest"):
            publish_artifact(reg, f"{registry.host}/lkctl/core-dev:{version}", write(tmp_path, "core-dev.qcow2", data))
    src = OciSource(f"{registry.host}/lkctl", retry=NO_WAIT)

    assert src.latest_version("core-dev", AMD64) == "1.10.0"  # version order, not string order
    result = pull_image("core-dev", sources=[src], platform=AMD64)
    src.close()

    img = read_installed("core-dev")
    assert img is not None and result.source == "oci"
    assert (img.version, img.files, img.sha256) == ("1.10.0", ("core-dev.qcow2",), hashlib.sha256(data).hexdigest())
    assert (img.path / "core-dev.qcow2").read_bytes() == data


@pytest.mark.usefixtures("no_docker_creds")
def test_index_is_narrowed_to_the_platform_and_a_missing_one_names_those_available(
    registry: Reg, tmp_path: Path
) -> None:
    files = {AMD64: write(tmp_path, "dev-amd64.img", image(8)), ARM64: write(tmp_path, "dev-arm64.img", image(8, 1))}
    ref = f"{registry.host}/lkctl/dev:2.0.0"
    with Registry(registry.host, retry=NO_WAIT) as reg:
        publish_artifact(reg, ref, files)
        index = reg.get_manifest(ref)
        assert index.is_index and {m["platform"]["architecture"] for m in index.json["manifests"]} == {"amd64", "arm64"}
    src = OciSource(f"{registry.host}/lkctl", retry=NO_WAIT)

    dl = src.resolve("dev", "2.0.0", ARM64)
    got = src.download(dl, tmp_path / "dl")
    with pytest.raises(SourceNotFound, match=r"no image for linux/riscv64 \(available: linux/amd64, linux/arm64\)"):
        src.resolve("dev", "2.0.0", Platform("linux", "riscv64"))
    with pytest.raises(SourceNotFound, match="not found"):
        src.resolve("dev", "9.9.9", AMD64)
    src.close()

    assert dl.file_name == "dev-arm64.img" and got.path.read_bytes() == image(8, 1)


@pytest.mark.usefixtures("no_docker_creds")
def test_blob_corrupted_in_the_registry_is_rejected_and_nothing_installed(
    registry: Reg, tmp_path: Path, lkctl_home: Path
) -> None:
    data = image(64)
    with Registry(registry.host, retry=NO_WAIT) as reg:
        publish_artifact(reg, f"{registry.host}/lkctl/core-dev:1.0.0", write(tmp_path, "core-dev.qcow2", data))
    blob = registry.blob_file("sha256:" + hashlib.sha256(data).hexdigest())
    blob.write_bytes(data[:-1] + b"\0")  # same size, one byte off: only the digest check can tell
    src = OciSource(f"{registry.host}/lkctl", retry=NO_WAIT)

    with pytest.raises(ImageError, match="sha256"):
        pull_image("core-dev", sources=[src], platform=AMD64)
    with pytest.raises(ChecksumMismatch):
        src.download(src.resolve("core-dev", "1.0.0", AMD64), tmp_path / "dl")
    src.close()

    assert read_installed("core-dev") is None and not (tmp_path / "dl" / "core-dev.qcow2").exists()


@pytest.mark.usefixtures("no_docker_creds")
def test_htpasswd_registry_needs_credentials_and_takes_them_from_docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with docker_registry(tmp_path / "reg", htpasswd_auth(tmp_path / "reg", "alice", "s3cret")) as registry:
        ref = f"{registry.host}/lkctl/core-dev:1.0.0"
        artifact = write(tmp_path, "core-dev.qcow2", image(16))
        with Registry(registry.host, retry=NO_WAIT) as anonymous:
            with pytest.raises(RegistryAuthError, match="authentication required"):
                publish_artifact(anonymous, ref, artifact)
        wrong = Credentials("alice", "nope")
        with Registry(registry.host, credentials=wrong, retry=NO_WAIT) as bad:
            with pytest.raises(RegistryAuthError, match="401 unauthorized as alice"):
                bad.get_manifest(ref)

        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(b"alice:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        assert credentials_for(registry.host) == Credentials("alice", "s3cret")

        with Registry(registry.host, retry=NO_WAIT) as reg:
            digest = publish_artifact(reg, ref, artifact)
        src = OciSource(f"{registry.host}/lkctl", retry=NO_WAIT)
        pulled = pull_image("core-dev", sources=[src], platform=AMD64)
        src.close()
        assert pulled.image.sha256 == hashlib.sha256(image(16)).hexdigest()

        # another client reads what we pushed: the manifest is a well-formed OCI artifact
        skopeo = require("skopeo", "skopeo")
        raw = subprocess.run(
            [skopeo, "inspect", "--raw", "--tls-verify=false", "--creds", "alice:s3cret", f"docker://{ref}"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
        manifest = json.loads(raw)
        assert manifest["artifactType"] == ARTIFACT_TYPE
        assert manifest["layers"][0]["annotations"][TITLE_ANNOTATION] == "core-dev.qcow2"


# -- token auth -------------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """Issues ES256 JWTs with the x5c chain distribution verifies against `rootcertbundle`."""

    key: object
    cert_der: bytes
    issuer: str = "lkctl-test-issuer"
    service: str = "lkctl-test-registry"
    users: tuple[tuple[str, str], ...] = (("bob", "hunter2"),)

    def route(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        query = parse_qs(urlsplit(req.path).query)
        user = ""
        if req.headers.get("authorization", "").startswith("Basic "):
            pair = tuple(base64.b64decode(req.headers["authorization"][6:]).decode().split(":", 1))
            if pair not in self.users:
                return json_response({"details": "bad credentials"}, 401)
            user = pair[0]
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            allowed = [a for a in actions.split(",") if a == "pull" or (a == "push" and user)]  # anonymous: pull
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]
        r, s = decode_dss_signature(der)
        token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        return json_response({"token": token, "access_token": token, "expires_in": 300})


def _token_service(work: Path) -> tuple[TokenService, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lkctl test token signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "token-root.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TokenService(key, cert.public_bytes(serialization.Encoding.DER)), bundle


@pytest.mark.usefixtures("no_docker_creds")
def test_bearer_token_challenge_is_answered_anonymously_for_pull_and_with_credentials_for_push(
    tmp_path: Path,
) -> None:
    service, bundle = _token_service(tmp_path / "token")
    with route_server(service.route) as tokens:
        auth = {
            "token": {
                "realm": f"{tokens.url}/token",
                "service": service.service,
                "issuer": service.issuer,
                "rootcertbundle": str(bundle),
            }
        }
        with docker_registry(tmp_path / "reg", auth) as registry:
            ref = f"{registry.host}/lkctl/core-dev:3.0.0"
            artifact = write(tmp_path, "core-dev.raw", image(32))
            with Registry(registry.host, retry=NO_WAIT) as anonymous:
                with pytest.raises(RegistryAuthError):
                    publish_artifact(anonymous, ref, artifact)  # anonymous tokens carry pull only
            with Registry(registry.host, credentials=Credentials("bob", "hunter2"), retry=NO_WAIT) as bob:
                publish_artifact(bob, ref, artifact)
            with Registry(registry.host, credentials=Credentials("bob", "wrong"), retry=NO_WAIT) as bad:
                with pytest.raises(RegistryAuthError, match="token request as bob refused"):
                    bad.get_manifest(ref)

            src = OciSource(f"{registry.host}/lkctl", retry=NO_WAIT)
            assert src.latest_version("core-dev", AMD64) == "3.0.0"
            got = src.download(src.resolve("core-dev", None, AMD64), tmp_path / "dl")
            src.close()

    assert got.path.read_bytes() == image(32)
    scopes = {parse_qs(urlsplit(r.path).query)["scope"][0] for r in tokens.seen}
    assert scopes >= {"repository:lkctl/core-dev:pull", "repository:lkctl/core-dev:pull,push"}
    assert all(parse_qs(urlsplit(r.path).query)["service"] == [service.service] for r in tokens.seen)


@pytest.mark.usefixtures("no_docker_creds")
def test_unknown_repository_is_not_found(registry: Reg) -> None:
    with Registry(registry.host, retry=NO_WAIT) as reg:
        with pytest.raises(RegistryNotFound, match="not found"):
            reg.get_manifest(f"{registry.host}/lkctl/nothing:1.0")
    src = OciSource(f"{registry.host}/lkctl", retry=NO_WAIT)
    with pytest.raises(SourceNotFound):
        src.latest_version("nothing", AMD64)
    src.close()
