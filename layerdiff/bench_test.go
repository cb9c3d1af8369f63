package layerdiff

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// benchLayer is a ~64 MiB layer of mixed files: many small, some medium, a
// few large; half text-like (compressible), half random.
var benchLayer = sync.OnceValue(func() []entry {
	rng := rand.New(rand.NewChaCha8([32]byte{1}))
	words := strings.Fields("the quick brown fox jumps over lazy dog layer overlay tar split digest zstd gzip container image")
	content := func(size int, text bool) string {
		if !text {
			b := make([]byte, size)
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			return string(b)
		}
		var sb strings.Builder
		for sb.Len() < size {
			sb.WriteString(words[rng.IntN(len(words))])
			sb.WriteByte(' ')
		}
		return sb.String()[:size]
	}
	var entries []entry
	total := 0
	for i := 0; total < 64<<20; i++ {
		dir := fmt.Sprintf("usr/lib/pkg%03d/", i/50)
		if i%50 == 0 {
			entries = append(entries, dirE(dir))
		}
		var size int
		switch {
		case i%100 == 99:
			size = 4<<20 + rng.IntN(1<<20)
		case i%10 == 9:
			size = 64<<10 + rng.IntN(448<<10)
		default:
			size = 512 + rng.IntN(16<<10)
		}
		entries = append(entries, fileE(fmt.Sprintf("%sfile%05d", dir, i), content(size, rng.IntN(2) == 0)))
		if i%20 == 0 {
			entries = append(entries, symlinkE(fmt.Sprintf("%slink%05d", dir, i), fmt.Sprintf("file%05d", i)))
		}
		total += size
	}
	return entries
})

// benchDir is where benchmarks extract: $LAYERDIFF_BENCH_DIR if set (say a
// tmpfs, to measure the pipeline rather than the disk), else a temporary
// directory.
func benchDir(b *testing.B) string {
	parent := os.Getenv("LAYERDIFF_BENCH_DIR")
	if parent == "" {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "layerdiff-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func BenchmarkApply(b *testing.B) {
	requireRoot(b)
	data := buildTar(b, benchLayer(), nil)
	for _, c := range []Compression{Uncompressed, Gzip, Zstd} {
		blob := compress(b, c, data)
		b.Run(c.String(), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			root := benchDir(b)
			for i := range b.N {
				dir := filepath.Join(root, fmt.Sprint(i))
				if err := os.Mkdir(dir, 0o755); err != nil {
					b.Fatal(err)
				}
				if _, err := Apply(context.Background(), dir, bytes.NewReader(blob), ApplyOptions{TarSplit: io.Discard}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := os.RemoveAll(dir); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(len(blob))/float64(len(data)), "ratio")
		})
	}
}

func BenchmarkReassemble(b *testing.B) {
	requireRoot(b)
	data := buildTar(b, benchLayer(), nil)
	dir := filepath.Join(benchDir(b), "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	var ts bytes.Buffer
	if _, err := Apply(context.Background(), dir, bytes.NewReader(data), ApplyOptions{TarSplit: &ts}); err != nil {
		b.Fatal(err)
	}
	a := applied{dir: dir, tarSplit: ts.Bytes()}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		rc, err := Reassemble(a.dir, bytes.NewReader(a.tarSplit))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		if err != nil || n != int64(len(data)) {
			b.Fatalf("reassembled %d bytes of %d: %v", n, len(data), err)
		}
		rc.Close()
	}
}

// BenchmarkApplyFile applies the layer blob $LAYERDIFF_BENCH_FILE (say
// scripts/compare-cstorage.sh's big.tar.gz or small.tar); skipped without.
func BenchmarkApplyFile(b *testing.B) {
	requireRoot(b)
	name := os.Getenv("LAYERDIFF_BENCH_FILE")
	if name == "" {
		b.Skip("$LAYERDIFF_BENCH_FILE not set")
	}
	fi, err := os.Stat(name)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size())
	root := benchDir(b)
	for i := range b.N {
		dir := filepath.Join(root, fmt.Sprint(i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(name)
		if err != nil {
			b.Fatal(err)
		}
		_, err = Apply(context.Background(), dir, f, ApplyOptions{TarSplit: io.Discard})
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
