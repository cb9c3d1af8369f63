package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether w is a terminal (what golang.org/x/term's
// IsTerminal does on Linux, without the extra module).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

const progressInterval = 200 * time.Millisecond

// progress reports the bytes a long operation has moved, on one line of a
// terminal rewritten in place. A nil *progress does nothing, so callers use
// it whether or not stderr is a terminal.
type progress struct {
	w     io.Writer
	label string
	total int64 // 0: unknown
	start time.Time
	n     atomic.Int64
	stop  chan struct{}
	done  sync.WaitGroup
}

// newProgress starts reporting on c's stderr if it is a terminal; total is
// the expected size or 0.
func (c *cli) newProgress(label string, total int64) *progress {
	if !c.stderrIsTerminal {
		return nil
	}
	p := &progress{w: c.stderr, label: label, total: total, start: time.Now(), stop: make(chan struct{})}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.print("")
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

func (p *progress) print(end string) {
	n := p.n.Load()
	elapsed := time.Since(p.start)
	line := fmt.Sprintf("%s: %s", p.label, humanBytes(n))
	if p.total > 0 {
		line += fmt.Sprintf(" / %s (%d%%)", humanBytes(p.total), n*100/p.total)
	}
	if s := elapsed.Seconds(); s > 0 {
		line += fmt.Sprintf(", %s/s", humanBytes(int64(float64(n)/s)))
	}
	// \r and clear to the end of the line: the line shrinks as well as grows.
	fmt.Fprintf(p.w, "\r%s\x1b[K%s", line, end)
}

// finish prints the final count and ends the line; ok false erases it.
func (p *progress) finish(ok bool) {
	if p == nil {
		return
	}
	close(p.stop)
	p.done.Wait()
	if ok {
		p.print("\n")
	} else {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

func (p *progress) reader(r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	return &countingReader{r: r, n: &p.n}
}

func (p *progress) writer(w io.Writer) io.Writer {
	if p == nil {
		return w
	}
	return &countingWriter{w: w, n: &p.n}
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// Seek lets the store read a seekable input again instead of spooling it;
// the count follows the position.
func (c *countingReader) Seek(offset int64, whence int) (int64, error) {
	sk, ok := c.r.(io.Seeker)
	if !ok {
		return 0, errors.ErrUnsupported
	}
	pos, err := sk.Seek(offset, whence)
	if err == nil {
		c.n.Store(pos)
	}
	return pos, err
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n), ""
	for _, s := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= unit
		suffix = s
		if v < unit {
			break
		}
	}
	return fmt.Sprintf("%.1f %s", v, suffix)
}
