package main

import (
	"github.com/quietlock/quietlock/analysis/trylockloop"
	"golang.org/x/tools/go/analysis/singlechecker"
)

func main() { singlechecker.Main(trylockloop.Analyzer) }
