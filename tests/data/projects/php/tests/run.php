<?php
if (getcwd() !== '/app' || file_exists('/app/FAIL')) {
    fwrite(STDERR, "php-test-failed\n");
    exit(1);
}
echo "php-test-ran\n";
