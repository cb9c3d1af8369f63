package storage

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
)

// handles returns n handles on s's store: separate clients of the daemon
// when a daemon serves it, s itself when it is embedded (the root is then
// this process's alone).
func handles(t *testing.T, s Store, n int) []Store {
	t.Helper()
	out := make([]Store, n)
	for i := range out {
		out[i] = s
		if !s.(*store).Remote() {
			continue
		}
		h, err := GetStore(StoreOptions{GraphRoot: s.GraphRoot(), RunRoot: s.RunRoot()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Free)
		out[i] = h
	}
	return out
}

// namedKind is what the name race tests do with one kind of item.
type namedKind struct {
	make    func(s Store, names []string) (string, error)
	delete  func(s Store, id string) error
	names   func(s Store) (map[string][]string, error) // item ID -> names
	setName func(s Store, id, name string) error       // AddNames or SetNames
}

// raceForName: one client keeps making and deleting an item named "n"
// while two others keep giving "n" to an item of their own; giving the
// name must never fail, and in the end exactly one item holds it.
func raceForName(t *testing.T, s Store, k namedKind, d time.Duration) {
	t.Helper()
	h := handles(t, s, 3)
	mine, err := k.make(h[0], []string{"mine"})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := k.make(h[2], []string{"theirs"})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	made := 0
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			id, err := k.make(h[1], []string{"n"})
			if err == nil {
				made++
				if err := k.delete(h[1], id); err != nil {
					errs <- fmt.Errorf("delete: %w", err)
					return
				}
			} else if !errors.Is(err, ErrDuplicateName) {
				errs <- fmt.Errorf("make: %w", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := k.setName(h[2], theirs, "n"); err != nil {
				errs <- fmt.Errorf("theirs: %w", err)
				return
			}
		}
	}()
	n := 0
	for deadline := time.Now().Add(d); time.Now().Before(deadline); n++ {
		if err := k.setName(h[0], mine, "n"); err != nil {
			t.Errorf("call %d: %v", n, err)
			break
		}
		select {
		case err := <-errs:
			t.Error(err)
		default:
		}
		if t.Failed() {
			break
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d calls; the other client made %d items named n", n, made)
	if t.Failed() {
		return
	}
	if err := k.setName(h[0], mine, "n"); err != nil {
		t.Fatal(err)
	}
	all, err := k.names(s)
	if err != nil {
		t.Fatal(err)
	}
	var holders []string
	for id, names := range all {
		for _, name := range names {
			if name == "n" {
				holders = append(holders, id)
			}
		}
	}
	if len(holders) != 1 || holders[0] != mine {
		t.Errorf("holders of n: %v, want only %s (%v)", holders, mine, all)
	}
}

var layerKind = namedKind{
	make: func(s Store, names []string) (string, error) {
		l, err := s.CreateLayer("", "", names, "", false, nil)
		if err != nil {
			return "", err
		}
		return l.ID, nil
	},
	delete: func(s Store, id string) error { return s.DeleteLayer(id) },
	names: func(s Store) (map[string][]string, error) {
		ls, err := s.Layers()
		out := map[string][]string{}
		for _, l := range ls {
			out[l.ID] = l.Names
		}
		return out, err
	},
	setName: func(s Store, id, name string) error { return s.AddNames(id, []string{name}) },
}

var imageKind = namedKind{
	make: func(s Store, names []string) (string, error) {
		img, err := s.CreateImage("", names, "", "", nil)
		if err != nil {
			return "", err
		}
		return img.ID, nil
	},
	delete: func(s Store, id string) error {
		_, err := s.DeleteImage(id, true)
		return err
	},
	names: func(s Store) (map[string][]string, error) {
		is, err := s.Images()
		out := map[string][]string{}
		for _, i := range is {
			out[i.ID] = i.Names
		}
		return out, err
	},
	setName: func(s Store, id, name string) error { return s.AddNames(id, []string{name}) },
}

func containerKind(image string) namedKind {
	return namedKind{
		make: func(s Store, names []string) (string, error) {
			c, err := s.CreateContainer("", names, image, "", "", nil)
			if err != nil {
				return "", err
			}
			return c.ID, nil
		},
		delete: func(s Store, id string) error { return s.DeleteContainer(id) },
		names: func(s Store) (map[string][]string, error) {
			cs, err := s.Containers()
			out := map[string][]string{}
			for _, c := range cs {
				out[c.ID] = c.Names
			}
			return out, err
		},
		// SetNames keeps the container's own name: the name moves, the
		// rest stays.
		setName: func(s Store, id, name string) error {
			names, err := s.Names(id)
			if err != nil {
				return err
			}
			own := names[:0:0]
			for _, n := range names {
				if n != name {
					own = append(own, n)
				}
			}
			return s.SetNames(id, append([]string{name}, own...))
		},
	}
}

// TestAddNamesRace: AddNames takes a name from whichever layer has it,
// however other clients move it or delete its holder meanwhile (bug 8).
func TestAddNamesRace(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		raceForName(t, s, layerKind, 3*time.Second)
	})
}

func TestImageAddNamesRace(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		raceForName(t, s, imageKind, 3*time.Second)
	})
}

func TestContainerSetNamesRace(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s)
		raceForName(t, s, containerKind(img.ID), 3*time.Second)
		// The container keeps its own name through the moves.
		all, err := containerKind(img.ID).names(s)
		if err != nil {
			t.Fatal(err)
		}
		for id, names := range all {
			if len(names) == 0 || (names[0] != "mine" && names[0] != "theirs" && names[0] != "n") {
				t.Errorf("container %s: names %v", id, names)
			}
		}
	})
}

// TestAddNamesInvalid: a name the daemon would refuse fails the call
// before anything moves: neither the item nor the holder of another name
// asked for changes.
func TestAddNamesInvalid(t *testing.T) {
	forModes(t, func(t *testing.T, s Store, sn snapshots.Snapshotter, cs content.Store) {
		img := imageWithFile(t, s)
		for what, k := range map[string]namedKind{"layer": layerKind, "image": imageKind, "container": containerKind(img.ID)} {
			x, err := k.make(s, []string{what + "-x"})
			if err != nil {
				t.Fatal(err)
			}
			y, err := k.make(s, []string{what + "-y"})
			if err != nil {
				t.Fatal(err)
			}
			before, err := k.names(s)
			if err != nil {
				t.Fatal(err)
			}
			for _, bad := range [][]string{
				{""},
				{what + "-y", strings.Repeat("z", 5000)},
				{what + "-y", "not UTF-8 \xff"},
			} {
				for call, fn := range map[string]func(string, []string) error{"AddNames": s.AddNames, "SetNames": s.SetNames} {
					if err := fn(x, bad); !errors.Is(err, ErrInvalidName) {
						t.Errorf("%s %s %q: %v, want %v", what, call, bad, err, ErrInvalidName)
					}
				}
			}
			after, err := k.names(s)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(before[x], after[x]) || !reflect.DeepEqual(before[y], after[y]) {
				t.Errorf("%s names changed: %v, %v -> %v, %v", what, before[x], before[y], after[x], after[y])
			}
		}
	})
}
