package main

import (
	"os"
	"testing"
)

func TestGreeting(t *testing.T) {
	if greeting() != "served-by-go" {
		t.Fatal("wrong greeting")
	}
	if _, err := os.Stat("/app/FAIL"); err == nil {
		t.Fatal("FAIL file present")
	}
}
