package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
)

func greeting() string { return "served-by-go" }

// A tiny HTTP/1.0 responder on package net alone: with net/http, the first `go test` in a fresh dev VM compiles
// crypto/tls and the rest of net/http's tree, which took more than 15 minutes under TCG on a loaded machine.
func main() {
	ln, err := net.Listen("tcp", "0.0.0.0:"+os.Getenv("PORT"))
	if err != nil {
		panic(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		r := bufio.NewReader(c)
		for line, err := r.ReadString('\n'); err == nil && line != "\r\n" && line != "\n"; line, err = r.ReadString('\n') {
		}
		fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n", greeting())
		c.Close()
	}
}
