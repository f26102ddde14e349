const http = require("http");
http.createServer((req, res) => res.end("served-by-node\n")).listen(Number(process.env.PORT), "0.0.0.0");
