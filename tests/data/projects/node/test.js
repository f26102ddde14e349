const fs = require("fs");
const assert = require("assert");
assert.strictEqual(process.cwd(), "/app");
assert.ok(!fs.existsSync("/app/FAIL"), "FAIL file present");
console.log("node-test-ran");
