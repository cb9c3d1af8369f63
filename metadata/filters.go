package metadata

import (
	"fmt"
	"reflect"
	"regexp"
	"sync"

	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
)

// ParseFilters parses Walk and ListStatuses filters as containerd does
// (filters.ParseAll: a syntax error is InvalidArgument) and also refuses a
// `~=` whose regular expression does not compile. containerd accepts one
// and compiles it again for every item it is matched against, logging an
// error each time and matching nothing: a walk of 10,000 snapshots would
// log 10,000 errors and answer with nothing instead of saying why.
func ParseFilters(fs ...string) (filters.Filter, error) {
	f, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	if err := checkRegexps(reflect.ValueOf(f)); err != nil {
		return nil, err
	}
	return f, nil
}

// matchesOp is the value of the `~=` operator in containerd's parsed
// filters (unexported there), learned from a parse; -1 if the filters'
// shape is not the one expected, which turns the check off.
var matchesOp = sync.OnceValue(func() int64 {
	f, err := filters.Parse("a~=b")
	if err != nil {
		return -1
	}
	v := reflect.ValueOf(f)
	for {
		for v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return -1
			}
			v = v.Elem()
		}
		if v.Kind() != reflect.Slice {
			break
		}
		if v.Len() != 1 {
			return -1
		}
		v = v.Index(0)
	}
	if op, value, ok := selectorOf(v); ok && value == "b" {
		return op
	}
	return -1
})

// selectorOf reads the operator and value of one of containerd's filter
// selectors.
func selectorOf(v reflect.Value) (op int64, value string, ok bool) {
	for v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return 0, "", false
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return 0, "", false
	}
	o, val := v.FieldByName("operator"), v.FieldByName("value")
	if !o.IsValid() || !val.IsValid() || o.Kind() != reflect.Int || val.Kind() != reflect.String {
		return 0, "", false
	}
	return o.Int(), val.String(), true
}

// checkRegexps compiles the regular expression of every `~=` in the parsed
// filter v (nested filters.Any and filters.All lists of selectors).
func checkRegexps(v reflect.Value) error {
	for v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if err := checkRegexps(v.Index(i)); err != nil {
				return err
			}
		}
	case reflect.Struct:
		op, value, ok := selectorOf(v)
		if ok && op == matchesOp() {
			if _, err := regexp.Compile(value); err != nil {
				return fmt.Errorf("filter: regular expression %q after ~=: %v: %w", value, err, errdefs.ErrInvalidArgument)
			}
		}
	}
	return nil
}
