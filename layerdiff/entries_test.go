package layerdiff

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vbatts/tar-split/tar/storage"
)

// tarSplitJSON packs entries with tar-split's own packer.
func tarSplitJSON(t testing.TB, list []storage.Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	p := storage.NewJSONPacker(&buf)
	for _, e := range list {
		if _, err := p.AddEntry(e); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// decodeAll reads every entry of up, and the error that ended it (nil for
// the end of the input).
func decodeAll(up storage.Unpacker) ([]storage.Entry, error) {
	var list []storage.Entry
	for {
		e, err := up.Next()
		if err == io.EOF {
			return list, nil
		}
		if err != nil {
			return list, err
		}
		list = append(list, *e)
	}
}

// The reassembly's decoder reads what tar-split's own does: raw segments,
// UTF-8 and raw names, sizes, checksums, positions; and refuses a
// duplicate file path the same way.
func TestTarSplitEntries(t *testing.T) {
	named := func(name string, size int64) storage.Entry {
		e := storage.Entry{Type: storage.FileType, Size: size, Payload: []byte{1, 2, 3, 4, 5, 6, 7, 8}}
		e.SetName(name)
		return e
	}
	list := []storage.Entry{
		{Type: storage.SegmentType, Payload: bytes.Repeat([]byte{0, 0xff, '"', '\\'}, 128)},
		named("etc/passwd", 1234),
		named("caf\xe9/not-utf8", 10),
		named("dir/\"quoted\"\n\u2028", 0),
		{Type: storage.SegmentType, Payload: nil},
	}
	data := tarSplitJSON(t, list)
	want, werr := decodeAll(storage.NewJSONUnpacker(bytes.NewReader(data)))
	got, gerr := decodeAll(newTarSplitEntries(bytes.NewReader(data)))
	if werr != nil || gerr != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n%+v %v\nwant\n%+v %v", got, gerr, want, werr)
	}
	if got[2].GetName() != "caf\xe9/not-utf8" {
		t.Errorf("raw name: %q", got[2].GetName())
	}

	// A duplicate: the packer refuses to write one, so craft it.
	dup := append(append([]byte{}, data...), tarSplitJSON(t, []storage.Entry{named("./etc//passwd", 1)})...)
	_, err := decodeAll(newTarSplitEntries(bytes.NewReader(dup)))
	if !errors.Is(err, storage.ErrDuplicatePath) {
		t.Errorf("duplicate path: %v", err)
	}

	for _, bad := range []string{`{"type":2,"payload":"AAAA"`, `{"type":"x"}`, `{"payload":"not base64!"}`, "\x00\xff", `[1,2]`, "{\"type\":2,\"payload\":\"AAAA\"}\n\x00{\"type\":2}"} {
		if _, err := decodeAll(newTarSplitEntries(strings.NewReader(bad))); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// FuzzTarSplitEntries: on any input the reassembly's decoder returns (no
// panic, no hang), and where both decoders read entries without error they
// read the same ones from valid UTF-8. (It may refuse what encoding/json takes but
// tar-split's packer never writes, such as two entries on one line.)
func FuzzTarSplitEntries(f *testing.F) {
	f.Add(tarSplitJSON(f, []storage.Entry{{Type: storage.SegmentType, Payload: []byte("seg")}, {Type: storage.FileType, Name: "a", Size: 3, Payload: []byte{1}}}))
	f.Add([]byte(`{"type":1,"name_raw":"/w==","size":1,"payload":"AQ==","position":0}` + "\n"))
	f.Add([]byte(`{"type":2,"payload":"AAAA"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		want, werr := decodeAll(storage.NewJSONUnpacker(bytes.NewReader(data)))
		got, gerr := decodeAll(newTarSplitEntries(bytes.NewReader(data)))
		// Invalid UTF-8 in a string (never written by the packer, which
		// puts such names in name_raw) encoding/json replaces with U+FFFD,
		// goccy/go-json keeps; either way the name stays under the root.
		if werr == nil && gerr == nil && utf8.Valid(data) && !reflect.DeepEqual(got, want) {
			t.Errorf("decoded\n%+v %v\nwant\n%+v", got, gerr, want)
		}
	})
}
