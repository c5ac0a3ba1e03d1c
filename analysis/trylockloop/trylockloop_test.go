package trylockloop_test

import (
	"testing"

	"github.com/quietlock/quietlock/analysis/trylockloop"
	"golang.org/x/tools/go/analysis/analysistest"
)

func TestAnalyzer(t *testing.T) {
	analysistest.Run(t, analysistest.TestData(), trylockloop.Analyzer,
		"loops", "watch", "calls", "incident", "negatives")
}
