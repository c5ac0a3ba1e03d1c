package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults of the flags both subcommands share.
const (
	defaultEndpoints   = "127.0.0.1:2379" // etcdctl's
	defaultDialTimeout = 2 * time.Second  // etcdctl's
	defaultTTL         = 10 * time.Second // etcdctl lock's --ttl
	defaultKillGrace   = time.Second
)

// cleanupTimeout bounds each request that releases something on the way
// out (an unlock, a lease revocation), so that an unreachable etcd cannot
// hold quietlock up for a whole TTL. What a failed release leaves behind
// goes with the lease, within the TTL.
const cleanupTimeout = 5 * time.Second

// errHelpShown is returned by the parsers after printing the help.
var errHelpShown = errors.New("help shown")

// common holds what both subcommands take: the connection, the session,
// the output and the command.
type common struct {
	conn      connFlags
	ttl       ttlValue
	killGrace time.Duration
	json      bool

	name    string   // the lock or election name, etcd's prefix
	command []string // the command to run, if any

	// set records the flags given on the command line or through an
	// ETCDCTL_* variable, to tell a default from a chosen value.
	set map[string]bool
}

func (c *common) register(fs *flag.FlagSet) {
	c.conn.register(fs)
	c.ttl = ttlValue(defaultTTL)
	fs.Var(&c.ttl, "ttl", "session TTL: a crashed holder is replaced this long after its last lease renewal; whole seconds (10 and 10s mean the same)")
	fs.DurationVar(&c.killGrace, "kill-grace", defaultKillGrace, "when the hold ends, how long the command's process group has between SIGTERM and SIGKILL; 0: SIGKILL at once")
	fs.BoolVar(&c.json, "json", false, "print one JSON event per line on stdout instead of etcdctl's output")
}

// validate checks what both subcommands share.
func (c *common) validate() error {
	switch {
	case c.name == "":
		return errors.New("the name must not be empty")
	case c.killGrace < 0:
		return fmt.Errorf("--kill-grace %v is negative", c.killGrace)
	}
	return c.conn.validate()
}

// ttlValue is a flag for a TTL in whole seconds, given as a duration (10s)
// or, as etcdctl takes it, a number of seconds (10).
type ttlValue time.Duration

func (v *ttlValue) String() string { return time.Duration(*v).String() }

func (v *ttlValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.Atoi(s)
		if nerr != nil {
			return errors.New("not a duration or a number of seconds")
		}
		d = time.Duration(n) * time.Second
	}
	if d < time.Second || d%time.Second != 0 {
		return errors.New("not a whole number of seconds, at least 1s")
	}
	*v = ttlValue(d)
	return nil
}

// connFlags are etcdctl's connection flags.
type connFlags struct {
	endpoints   string
	dialTimeout time.Duration
	user        string
	password    string
	cacert      string
	cert        string
	key         string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.endpoints, "endpoints", defaultEndpoints, "comma-separated etcd endpoints ($ETCDCTL_ENDPOINTS)")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", defaultDialTimeout, "how long etcd has to answer the first request ($ETCDCTL_DIAL_TIMEOUT)")
	fs.StringVar(&c.user, "user", "", "user[:password] for authentication ($ETCDCTL_USER)")
	fs.StringVar(&c.password, "password", "", "password for authentication, if --user has none ($ETCDCTL_PASSWORD)")
	fs.StringVar(&c.cacert, "cacert", "", "verify the servers' certificates with this CA bundle ($ETCDCTL_CACERT)")
	fs.StringVar(&c.cert, "cert", "", "identify this client with this TLS certificate file ($ETCDCTL_CERT)")
	fs.StringVar(&c.key, "key", "", "identify this client with this TLS key file ($ETCDCTL_KEY)")
}

// envVars are the environment variables etcdctl reads for its flags. A
// flag given on the command line wins over its variable.
var envVars = []struct{ flag, env string }{
	{"endpoints", "ETCDCTL_ENDPOINTS"},
	{"dial-timeout", "ETCDCTL_DIAL_TIMEOUT"},
	{"user", "ETCDCTL_USER"},
	{"password", "ETCDCTL_PASSWORD"},
	{"cacert", "ETCDCTL_CACERT"},
	{"cert", "ETCDCTL_CERT"},
	{"key", "ETCDCTL_KEY"},
}

func (c *connFlags) validate() error {
	switch {
	case len(c.endpointList()) == 0:
		return errors.New("--endpoints is empty")
	case c.dialTimeout <= 0:
		return fmt.Errorf("--dial-timeout %v is not positive", c.dialTimeout)
	case (c.cert == "") != (c.key == ""):
		return errors.New("--cert and --key go together")
	case c.user == "" && c.password != "":
		return errors.New("--password without --user")
	case strings.Contains(c.user, ":") && c.password != "":
		return errors.New("--user includes a password and --password is set too")
	case c.user != "" && !strings.Contains(c.user, ":") && c.password == "":
		// etcdctl prompts for it; a command run by cron has nobody to ask.
		return errors.New("--user without a password: give user:password, --password or $ETCDCTL_PASSWORD")
	}
	return nil
}

func (c *connFlags) endpointList() []string {
	var eps []string
	for _, e := range strings.Split(c.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

// clientConfig returns the client configuration the flags describe.
func (c *connFlags) clientConfig() (clientv3.Config, error) {
	cfg := clientv3.Config{
		Endpoints:   c.endpointList(),
		DialTimeout: c.dialTimeout,
	}
	if c.user != "" {
		cfg.Username, cfg.Password = c.user, c.password
		if u, p, ok := strings.Cut(c.user, ":"); ok {
			cfg.Username, cfg.Password = u, p
		}
	}
	if c.cacert == "" && c.cert == "" {
		return cfg, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.cacert != "" {
		pem, err := os.ReadFile(c.cacert)
		if err != nil {
			return cfg, fmt.Errorf("--cacert: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("--cacert: no PEM certificate in %s", c.cacert)
		}
	}
	if c.cert != "" {
		kp, err := tls.LoadX509KeyPair(c.cert, c.key)
		if err != nil {
			return cfg, fmt.Errorf("--cert/--key: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	cfg.TLS = tc
	return cfg, nil
}

// connect returns a client of the etcd the flags name once etcd has
// answered a read under name, or an error within the dial timeout (or when
// ctx ends). clientv3.New does not fail on an unreachable etcd by itself, so
// the first request is what proves the connection; a read writes nothing.
func connect(ctx context.Context, c *connFlags, name string) (*clientv3.Client, error) {
	cfg, err := c.clientConfig()
	if err != nil {
		return nil, err
	}
	where := strings.Join(cfg.Endpoints, ",")
	cli, err := newQuietClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", where, err)
	}
	rctx, cancel := context.WithTimeout(ctx, c.dialTimeout)
	defer cancel()
	if _, err := cli.Get(rctx, name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		cli.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("etcd at %s unreachable: %w", where, err)
	}
	return cli, nil
}

// newQuietClient is clientv3.New with the client's own logging off unless
// $ETCD_CLIENT_DEBUG asks for it: by default the client logs every retry on
// stderr, which is the user's and the command's. The client reads that
// variable only in New, and quietlock imports no logging package to hand it
// a logger, so the variable is set for the call and then restored (before
// any command is started, so the command does not inherit it).
func newQuietClient(cfg clientv3.Config) (*clientv3.Client, error) {
	const debugVar = "ETCD_CLIENT_DEBUG"
	if _, ok := os.LookupEnv(debugVar); !ok {
		os.Setenv(debugVar, "fatal")
		defer os.Unsetenv(debugVar)
	}
	return clientv3.New(cfg)
}

// parseArgs parses args with fs the way etcdctl does, flags anywhere among
// the positional arguments, until the command starts. It collects up to
// maxPos positional arguments. The command is what follows "--" or, when
// bareCommand is set, what follows the last positional argument; flags
// after the start of the command are the command's. dashed reports whether
// the command followed "--".
func parseArgs(fs *flag.FlagSet, args []string, maxPos int, bareCommand bool) (pos, command []string, dashed bool, err error) {
	for i := 0; i < len(args); {
		a := args[i]
		switch {
		case a == "--":
			return pos, args[i+1:], true, nil
		case len(a) > 1 && a[0] == '-':
			n := min(flagTokens(fs, a), len(args)-i)
			if err := fs.Parse(args[i : i+n]); err != nil {
				return nil, nil, false, err
			}
			i += n
		case len(pos) < maxPos:
			pos = append(pos, a)
			i++
		case bareCommand:
			return pos, args[i:], false, nil
		default:
			return nil, nil, false, fmt.Errorf("unexpected argument %q (a command goes after --)", a)
		}
	}
	return pos, nil, false, nil
}

// flagTokens returns how many arguments the flag argument a takes up: 2 for
// a flag whose value is the next argument, else 1.
func flagTokens(fs *flag.FlagSet, a string) int {
	name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
	if strings.Contains(name, "=") {
		return 1
	}
	f := fs.Lookup(name)
	if f == nil {
		return 1 // fs.Parse reports it
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return 1
	}
	return 2
}

// applyEnv sets, from etcdctl's environment variables, the connection flags
// not given on the command line, and records in c.set every flag given
// either way.
func (c *common) applyEnv(fs *flag.FlagSet) error {
	c.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.set[f.Name] = true })
	cliPassword := c.set["password"]
	for _, v := range envVars {
		val, ok := os.LookupEnv(v.env)
		if !ok || val == "" || c.set[v.flag] {
			continue
		}
		if err := fs.Set(v.flag, val); err != nil {
			return fmt.Errorf("invalid value %q in $%s: %v", val, v.env, err)
		}
		c.set[v.flag] = true
	}
	// A password in --user on the command line wins over $ETCDCTL_PASSWORD.
	if !cliPassword && strings.Contains(c.conn.user, ":") {
		c.conn.password = ""
	}
	return nil
}

// newFlagSet returns a flag set that reports errors to its caller only.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// printHelp prints a subcommand's help text and flags to w.
func printHelp(w io.Writer, fs *flag.FlagSet, text string) {
	fmt.Fprint(w, text)
	fmt.Fprintln(w, "\nFlags (-flag and --flag are the same):")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
