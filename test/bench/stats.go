package main

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"slices"
	"time"
)

func median(v []float64) float64 { return percentileF(v, 50) }

// percentileF is the nearest-rank percentile (the median of an even count
// is the mean of the middle two).
func percentileF(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if p == 50 {
		if len(s)%2 == 1 {
			return s[len(s)/2]
		}
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	i := int(p/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func percentile(v []time.Duration, p float64) time.Duration {
	f := make([]float64, len(v))
	for i, d := range v {
		f[i] = float64(d)
	}
	return time.Duration(percentileF(f, p))
}

func digestOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(h[:])
}

// plainWriter hides io.Discard's ReaderFrom (8 KiB reads) so that
// io.CopyBuffer reads with its 1 MiB buffer.
type plainWriter struct{ w io.Writer }

func (p plainWriter) Write(b []byte) (int, error) { return p.w.Write(b) }

func hashCopy(r io.Reader) (int64, string, error) {
	h := sha256.New()
	if r == nil {
		return 0, "", nil
	}
	n, err := io.CopyBuffer(plainWriter{h}, r, make([]byte, 1<<20))
	return n, "sha256:" + hex.EncodeToString(h.Sum(nil)), err
}

func countCopy(r io.Reader) (int64, error) {
	return io.CopyBuffer(plainWriter{io.Discard}, r, make([]byte, 1<<20))
}
