package dmw

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The tests that need a real server start the binary named by
// DATAMIDDLEWARE_BIN. Without it they are skipped, unless CI=true, in which
// case they fail.

var serverBin = os.Getenv("DATAMIDDLEWARE_BIN")

func requireServer(t *testing.T) {
	t.Helper()
	if serverBin != "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("DATAMIDDLEWARE_BIN is not set and CI=true: set it to the datamiddleware server binary")
	}
	t.Skip("SKIPPED: DATAMIDDLEWARE_BIN is not set; set it to the datamiddleware server binary to run the tests against a real server")
}

func TestMain(m *testing.M) {
	code := m.Run()
	sharedMu.Lock()
	if shared != nil {
		shared.stop()
		os.RemoveAll(shared.dir)
	}
	sharedMu.Unlock()
	os.Exit(code)
}

// serverConfig is what differs between the servers the tests start.
type serverConfig struct {
	TCP         string // extra lines of [tcp]
	Extra       string // extra TOML, after [tcp] (e.g. [auth], [responses])
	Collections string // extra lines after the default collections of games.default
	Grace       string // http.shutdown_grace (default 5s)
}

type server struct {
	dir      string
	cfg      serverConfig
	tcpAddr  string
	httpAddr string
	logPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (s *server) configText() string {
	grace := s.cfg.Grace
	if grace == "" {
		grace = "5s"
	}
	db := filepath.Join(s.dir, "data.db")
	return fmt.Sprintf(`[http]
listen = %q
shutdown_grace = %q

[tcp]
listen = %q
%s

%s

[store]
sqlite_synchronous = "normal"

[log]
filter = "warn"

[games.default]
store = "sqlite://%s"
[games.default.collections.players]
[games.default.collections.counters]
[games.default.collections.items]
[games.default.collections.small]
max_document_bytes = 1024
%s

[games.arena]
store = "sqlite://%s"
[games.arena.collections.units]
`, s.httpAddr, grace, s.tcpAddr, s.cfg.TCP, s.cfg.Extra, db, s.cfg.Collections, db)
}

// newServer starts a server with its own temp dir and ports; it is stopped
// when the test ends.
func newServer(t *testing.T, cfg serverConfig) *server {
	t.Helper()
	requireServer(t)
	dir, err := os.MkdirTemp("", "dmw-go-test-")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{dir: dir, cfg: cfg, tcpAddr: freePort(), httpAddr: freePort()}
	if err := s.start(); err != nil {
		s.stop()
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.stop()
		os.RemoveAll(dir)
	})
	return s
}

var (
	sharedMu  sync.Mutex
	shared    *server
	sharedErr error
)

// sharedServer is one server for the tests that only need the defaults
// (started on first use, stopped by TestMain).
func sharedServer(t *testing.T) *server {
	t.Helper()
	requireServer(t)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		dir, err := os.MkdirTemp("", "dmw-go-shared-")
		if err != nil {
			t.Fatal(err)
		}
		s := &server{dir: dir, tcpAddr: freePort(), httpAddr: freePort()}
		if sharedErr = s.start(); sharedErr == nil {
			shared = s
		}
	}
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

func (s *server) start() error {
	cfgPath := filepath.Join(s.dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(s.configText()), 0o644); err != nil {
		return err
	}
	s.logPath = filepath.Join(s.dir, fmt.Sprintf("server-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(s.logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(serverBin, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "RUST_LOG=warn")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", serverBin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", s.tcpAddr, 200*time.Millisecond)
		if err == nil {
			nc.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("server exited before accepting on %s (config:\n%s)\nlog:\n%s", s.tcpAddr, s.configText(), s.logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server did not accept on %s within 15 s; log:\n%s", s.tcpAddr, s.logTail())
		}
	}
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*m")

func (s *server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	out := ansi.ReplaceAllString(string(b), "")
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return out
}

// sigterm sends SIGTERM without waiting.
func (s *server) sigterm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
	}
}

// wait waits for the process to exit (killing it after d).
func (s *server) wait(d time.Duration) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
	case <-time.After(d):
		cmd.Process.Kill()
		<-exited
	}
}

// stop sends SIGTERM and waits for the process to exit.
func (s *server) stop() {
	s.sigterm()
	s.wait(15 * time.Second)
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

// countingDialer counts TCP connection attempts.
type countingDialer struct {
	n int64
	d net.Dialer
}

func (cd *countingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	atomic.AddInt64(&cd.n, 1)
	return cd.d.DialContext(ctx, network, addr)
}

func (cd *countingDialer) count() int64 { return atomic.LoadInt64(&cd.n) }

// newClient returns a client with a counting dialer, closed at the end of
// the test.
func newClient(t *testing.T, addr string, opts Options) (*Client, *countingDialer) {
	t.Helper()
	cd := &countingDialer{}
	if opts.Dialer == nil {
		opts.Dialer = cd.dial
	}
	if opts.ClientName == "" {
		opts.ClientName = "go-test/" + t.Name()
	}
	c, err := New(addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, cd
}

var idChars = regexp.MustCompile(`[^A-Za-z0-9_.:@-]`)

// uid returns a document id unique to the test.
func uid(t *testing.T, suffix string) string {
	name := idChars.ReplaceAllString(strings.TrimPrefix(t.Name(), "Test"), "-")
	id := fmt.Sprintf("%s-%d-%s", name, time.Now().UnixNano()%1e9, suffix)
	if len(id) > 128 {
		id = id[len(id)-128:]
	}
	return strings.TrimLeft(id, "_")
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
