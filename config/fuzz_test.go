package config

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// FuzzParse parses arbitrary bytes as the configuration file. Parse must
// not panic; an error must be one line that says something (the daemon
// prints it and exits); and a configuration it accepts must be valid and
// survive `cs-snapshotter config default`'s encoding: encoded and parsed
// again, it is the same. The seed corpus is in testdata/fuzz/FuzzParse/.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		err := Parse(data, &c)
		if err != nil {
			msg := err.Error()
			if strings.TrimSpace(msg) == "" || strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error %q: empty or more than one line", msg)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid configuration: %v", err)
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encoding %+v: %v", c, err)
		}
		again := Default()
		if err := Parse(buf.Bytes(), &again); err != nil {
			t.Fatalf("parsing the encoding of %+v:\n%s\n%v", c, buf.Bytes(), err)
		}
		if len(c.Snapshotter.MountOptions) == 0 && len(again.Snapshotter.MountOptions) == 0 {
			c.Snapshotter.MountOptions, again.Snapshotter.MountOptions = nil, nil
		}
		if len(c.AdditionalImageStores) == 0 && len(again.AdditionalImageStores) == 0 {
			c.AdditionalImageStores, again.AdditionalImageStores = nil, nil
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("encoded and parsed again, %+v is %+v", c, again)
		}
	})
}
