// Package silent is the logger of a lock, election or runner given no
// logger: it drops every record. (slog.DiscardHandler needs Go 1.24.)
package silent

import (
	"context"
	"log/slog"
)

// Logger returns a logger that logs nothing.
func Logger() *slog.Logger { return slog.New(handler{}) }

type handler struct{}

func (handler) Enabled(context.Context, slog.Level) bool  { return false }
func (handler) Handle(context.Context, slog.Record) error { return nil }
func (h handler) WithAttrs([]slog.Attr) slog.Handler      { return h }
func (h handler) WithGroup(string) slog.Handler           { return h }
