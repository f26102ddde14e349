package main

import (
	"fmt"
	"net/http"
	"os"
)

func greeting() string { return "served-by-go" }

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, greeting()) })
	if err := http.ListenAndServe("0.0.0.0:"+os.Getenv("PORT"), nil); err != nil {
		panic(err)
	}
}
