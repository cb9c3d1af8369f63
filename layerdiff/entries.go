package layerdiff

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"path/filepath"

	json "github.com/goccy/go-json"
	"github.com/vbatts/tar-split/tar/storage"
)

// tarSplitEntries reads a tar-split's JSON entries, one per line as
// tar-split's packer writes them, duplicate file paths refused as
// storage.NewJSONUnpacker does. Each line is decoded with goccy/go-json:
// with encoding/json's stream decoder the decoding was a third of a
// reassembly's CPU time. Lines are split here, not by goccy's stream
// decoder, which takes a read error or a NUL byte for the end of input.
type tarSplitEntries struct {
	r    *bufio.Reader
	seen map[string]struct{}
}

func newTarSplitEntries(r io.Reader) *tarSplitEntries {
	return &tarSplitEntries{r: bufio.NewReaderSize(r, 64<<10), seen: map[string]struct{}{}}
}

func (u *tarSplitEntries) Next() (*storage.Entry, error) {
	line, err := u.line()
	if err != nil {
		return nil, err
	}
	e, err := decodeEntry(line)
	if err != nil {
		return nil, err
	}
	if e.Type == storage.FileType {
		name := filepath.Clean(e.GetName())
		if _, ok := u.seen[name]; ok {
			return nil, storage.ErrDuplicatePath
		}
		u.seen[name] = struct{}{}
	}
	return e, nil
}

// line returns the next line that is not blank, without its newline.
func (u *tarSplitEntries) line() ([]byte, error) {
	for {
		line, err := u.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long line (a big segment): gather it whole.
			var long []byte
			long = append(long, line...)
			for err == bufio.ErrBufferFull {
				line, err = u.r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err == io.EOF && len(bytes.TrimSpace(line)) > 0 {
			err = nil // a last line without its newline
		}
		if err != nil {
			return nil, err
		}
		if line = bytes.TrimSpace(line); len(line) > 0 {
			return line, nil
		}
	}
}

func decodeEntry(line []byte) (e *storage.Entry, err error) {
	// A decoder bug on crafted input must fail this reassembly, not the
	// daemon.
	defer func() {
		if p := recover(); p != nil {
			e, err = nil, fmt.Errorf("tar-split entry: decoder failed: %v", p)
		}
	}()
	if bytes.IndexByte(line, 0) >= 0 {
		return nil, fmt.Errorf("tar-split entry: NUL byte in its JSON")
	}
	e = &storage.Entry{}
	if err := json.Unmarshal(line, e); err != nil {
		return nil, fmt.Errorf("tar-split entry: %w", err)
	}
	return e, nil
}
