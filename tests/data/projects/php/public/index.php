<?php echo "served-by-php\n";
