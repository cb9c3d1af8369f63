package layerdiff

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDetectCompression(t *testing.T) {
	data := buildTar(t, smallLayer(), nil)
	bz2, err := os.ReadFile(filepath.Join("testdata", "small.tar.bz2"))
	if err != nil {
		t.Fatal(err)
	}
	// A plain tar whose first entry starts like bzip2's magic, which
	// containers/storage takes for bzip2.
	bzhTar := buildTar(t, []entry{fileE("BZh9 is not bzip2", "not bzip2")}, nil)
	// A zstd skippable frame (magic 0x184D2A50, 4 bytes of content)
	// before the data frame.
	skippable := append([]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 'm', 'e', 't', 'a'}, compress(t, Zstd, data)...)

	for _, tc := range []struct {
		name string
		blob []byte
		want Compression
	}{
		{"tar", data, Uncompressed},
		{"empty", nil, Uncompressed},
		{"short", []byte{0x1f}, Uncompressed},
		{"gzip", compress(t, Gzip, data), Gzip},
		{"zstd", compress(t, Zstd, data), Zstd},
		{"zstd skippable frame", skippable, Zstd},
		{"xz", compress(t, Xz, data), Xz},
		{"bzip2", bz2, Bzip2},
		{"tar named BZh", bzhTar, Uncompressed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(bytes.NewReader(tc.blob))
			got, err := DetectCompression(br)
			if err != nil || got != tc.want {
				t.Fatalf("DetectCompression = %v %v, want %v", got, err, tc.want)
			}
			// Nothing consumed.
			if rest, _ := io.ReadAll(br); !bytes.Equal(rest, tc.blob) {
				t.Error("DetectCompression consumed input")
			}
			rc, c, err := Decompress(bytes.NewReader(tc.blob))
			if err != nil || c != tc.want {
				t.Fatalf("Decompress = %v %v", c, err)
			}
			out, err := io.ReadAll(rc)
			if err != nil {
				t.Fatalf("reading: %v", err)
			}
			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			want := data
			switch tc.name {
			case "tar named BZh":
				want = bzhTar
			case "empty", "short":
				want = tc.blob
			}
			if !bytes.Equal(out, want) {
				t.Errorf("decompressed %d bytes, want %d", len(out), len(want))
			}
		})
	}
}

func TestCompressRoundTrip(t *testing.T) {
	data := []byte(strings.Repeat("layer data ", 10000))
	for _, c := range []Compression{Uncompressed, Gzip, Zstd, Xz} {
		t.Run(c.String(), func(t *testing.T) {
			var buf bytes.Buffer
			w, err := Compress(&buf, c)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if c != Uncompressed && buf.Len() >= len(data)/10 {
				t.Errorf("%v: %d bytes from %d", c, buf.Len(), len(data))
			}
			rc, got, err := Decompress(&buf)
			if err != nil || got != c {
				t.Fatalf("Decompress: %v %v", got, err)
			}
			defer rc.Close()
			out, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(out, data) {
				t.Errorf("round trip: %d bytes, %v", len(out), err)
			}
		})
	}
	if _, err := Compress(io.Discard, Bzip2); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("bzip2: %v", err)
	}
}

func TestCompressionString(t *testing.T) {
	for c, want := range map[Compression]string{Uncompressed: "none", Gzip: "gzip", Zstd: "zstd", Bzip2: "bzip2", Xz: "xz", 42: "Compression(42)"} {
		if c.String() != want {
			t.Errorf("%d: %q, want %q", int(c), c.String(), want)
		}
	}
}

func TestDecompressTruncated(t *testing.T) {
	data := buildTar(t, smallLayer(), nil)
	for _, c := range []Compression{Gzip, Zstd, Xz} {
		blob := compress(t, c, data)
		rc, _, err := Decompress(bytes.NewReader(blob[:len(blob)-10]))
		if err == nil {
			_, err = io.ReadAll(rc)
			rc.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.String()) {
			t.Errorf("%v truncated: %v", c, err)
		}
	}
}
