package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/storageconf"
)

// Which source each store option comes from: the flag, then
// $STORAGE_DRIVER/$STORAGE_OPTS, then storage.conf, then config.toml,
// then the defaults.
func TestResolveStoreOptions(t *testing.T) {
	file := &storageconf.Config{File: "/etc/containers/storage.conf", Options: storageconf.Options{
		GraphRoot: "/conf/graph", RunRoot: "/conf/run", ImageStore: "/conf/images", GraphDriverName: "overlay",
		GraphDriverOptions: []string{"overlay.mountopt=nodev"}, ROImageStores: []string{"/conf/ro"}, TransientStore: true,
	}}
	cfg := config.Config{Root: "/cfg/root", RunRoot: "/cfg/run"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		conf *storageconf.Config
		cfg  config.Config
		want storage.StoreOptions
	}{
		{
			name: "defaults",
			want: storage.StoreOptions{GraphRoot: config.DefaultRoot, RunRoot: config.DefaultRunRoot, GraphDriverName: "overlay"},
		},
		{
			name: "config.toml",
			cfg:  cfg,
			want: storage.StoreOptions{GraphRoot: "/cfg/root", RunRoot: "/cfg/run", GraphDriverName: "overlay"},
		},
		{
			name: "storage.conf over config.toml",
			conf: file,
			cfg:  cfg,
			want: storage.StoreOptions{
				GraphRoot: "/conf/graph", RunRoot: "/conf/run", ImageStore: "/conf/images", GraphDriverName: "overlay",
				GraphDriverOptions: []string{"overlay.mountopt=nodev"}, ROImageStores: []string{"/conf/ro"}, TransientStore: true,
			},
		},
		{
			name: "flags over storage.conf",
			args: []string{"-g", "/flag/graph", "--run=/flag/run", "--image-store", "/flag/images", "--transient-store=false",
				"-s", "overlay", "--storage-opt", "overlay.mountopt=nosuid"},
			conf: file,
			cfg:  cfg,
			want: storage.StoreOptions{
				GraphRoot: "/flag/graph", RunRoot: "/flag/run", ImageStore: "/flag/images", GraphDriverName: "overlay",
				GraphDriverOptions: []string{"overlay.mountopt=nosuid"},
			},
		},
		{
			name: "one flag, the rest from storage.conf",
			args: []string{"--graph", "/flag/graph"},
			conf: file,
			want: storage.StoreOptions{
				GraphRoot: "/flag/graph", RunRoot: "/conf/run", ImageStore: "/conf/images", GraphDriverName: "overlay",
				GraphDriverOptions: []string{"overlay.mountopt=nodev"}, ROImageStores: []string{"/conf/ro"}, TransientStore: true,
			},
		},
		{
			// As containers/storage: $STORAGE_OPTS replaces the file's
			// driver options, the additional image stores with them;
			// $STORAGE_DRIVER its driver.
			name: "environment over storage.conf",
			env:  map[string]string{"STORAGE_OPTS": "overlay.mountopt=nodev,overlay.imagestore=/env/ro", "STORAGE_DRIVER": "vfs"},
			conf: file,
			want: storage.StoreOptions{
				GraphRoot: "/conf/graph", RunRoot: "/conf/run", ImageStore: "/conf/images", GraphDriverName: "vfs",
				GraphDriverOptions: []string{"overlay.mountopt=nodev", "overlay.imagestore=/env/ro"}, TransientStore: true,
			},
		},
		{
			name: "flags over environment",
			args: []string{"--storage-driver", "overlay", "--storage-opt", "overlay.imagestore=/flag/ro"},
			env:  map[string]string{"STORAGE_OPTS": "overlay.mountopt=nodev", "STORAGE_DRIVER": "vfs"},
			want: storage.StoreOptions{
				GraphRoot: config.DefaultRoot, RunRoot: config.DefaultRunRoot, GraphDriverName: "overlay",
				GraphDriverOptions: []string{"overlay.imagestore=/flag/ro"},
			},
		},
		{
			name: "a storage.conf that sets little",
			conf: &storageconf.Config{File: "/s.conf", Options: storageconf.Options{RunRoot: "/conf/run"}},
			cfg:  cfg,
			want: storage.StoreOptions{GraphRoot: "/cfg/root", RunRoot: "/conf/run", GraphDriverName: "overlay"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := globalOptions{graph: config.DefaultRoot, run: config.DefaultRunRoot, driver: "overlay"}
			fs := newFlagSet("test")
			g.register(fs)
			if err := fs.parse(tc.args); err != nil {
				t.Fatal(err)
			}
			got, err := g.resolve(fs.isSet, func(k string) string { return tc.env[k] }, tc.conf, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// runCLIEnv runs the binary with extra environment variables.
func runCLIEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%v: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

func TestCLIStorageConf(t *testing.T) {
	s := newCLIStore(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "storage.conf")
	write := func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("storage.conf", `# a node's storage.conf
[storage]
driver = "overlay"
runroot = "`+s.run+`"
graphroot = "`+s.graph+`"

[storage.options]
additionalimagestores = [
]
pull_options = {enable_partial_images = "false", use_hard_links = "false", ostree_repos=""}
use_composefs = "false"

[storage.options.overlay]
mountopt = "nodev,metacopy=on"
mount_program = "/usr/bin/fuse-overlayfs"
`)

	// --storage-conf picks graphroot and runroot; the warnings name every
	// option not applied.
	r := runCLI(t, nil, "--storage-conf", conf, "create-layer", "-n", "from-conf")
	if r.code != 0 {
		t.Fatalf("create-layer: %s", r)
	}
	id := createdID(t, r.stdout, "from-conf")
	for _, w := range []string{
		conf + ":11: storage.options.use_composefs: unknown option, ignored",
		conf + ": storage.options.overlay.mountopt: recorded, not applied",
		conf + ": storage.options.overlay.mount_program: ignored: cs-snapshotter does not support mount_program",
		conf + ": storage.options.pull_options: ignored",
	} {
		if !strings.Contains(r.stderr, "cs-snapshotter: warning: "+w) {
			t.Errorf("stderr %q does not warn %q", r.stderr, w)
		}
	}
	if got := s.ok("layers", "-q"); got != id+"\n" {
		t.Errorf("the layer is not in the storage.conf's graphroot: layers %q", got)
	}
	// The mount count lives in the runroot the file names.
	mnt := strings.TrimSpace(runCLI(t, nil, "--storage-conf", conf, "mount", "from-conf").stdout)
	if !strings.HasPrefix(mnt, s.run+string(filepath.Separator)) {
		t.Errorf("mounted at %q, not under the runroot %s", mnt, s.run)
	}
	s.expect(0, "from-conf mountpoint unmounted\n", "unmount", "from-conf")

	// Flags win over the file: another graph root.
	other := t.TempDir()
	if r := runCLI(t, nil, "--storage-conf", conf, "--graph", filepath.Join(other, "graph"), "--run", filepath.Join(other, "run"), "layers", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("--graph after --storage-conf: %s; want the other, empty store", r)
	}
	// The flag is taken after the command too.
	if r := runCLI(t, nil, "layers", "-q", "--storage-conf", conf); r.code != 0 || r.stdout != id+"\n" {
		t.Errorf("layers --storage-conf: %s", r)
	}

	// --default-storage-conf reads $CONTAINERS_STORAGE_CONF first.
	if r := runCLIEnv(t, []string{storageconf.EnvVar + "=" + conf}, "--default-storage-conf", "layers", "-q"); r.code != 0 || r.stdout != id+"\n" {
		t.Errorf("--default-storage-conf with $%s: %s", storageconf.EnvVar, r)
	}
	if r := runCLIEnv(t, []string{storageconf.EnvVar + "=" + filepath.Join(dir, "missing.conf")}, "--default-storage-conf", "layers"); r.code != 1 || !strings.Contains(r.stderr, "$"+storageconf.EnvVar) {
		t.Errorf("--default-storage-conf with a missing $%s: %s", storageconf.EnvVar, r)
	}
	// Without --storage-conf or --default-storage-conf, no storage.conf.
	if r := runCLIEnv(t, []string{storageconf.EnvVar + "=" + conf}, "--graph", filepath.Join(other, "graph"), "--run", filepath.Join(other, "run"), "layers", "-q"); r.code != 0 || r.stdout != "" || strings.Contains(r.stderr, "warning") {
		t.Errorf("$%s without --default-storage-conf: %s", storageconf.EnvVar, r)
	}

	// A separate image store that cannot be one (the graph root itself,
	// not creatable) and additional ones that are not stores (here:
	// missing) are refused: a clear error naming the option and the path,
	// exit 1 as containers-storage's "error initializing", and the store
	// as it was; serve hands them to the daemon, which refuses them
	// too. --containerd takes none yet.
	roConf := write("ro.conf", "[storage]\ngraphroot = \""+s.graph+"\"\nrunroot = \""+s.run+"\"\n[storage.options]\nadditionalimagestores = [\"/mnt/nfs/images\", \"/mnt/ro\"]\n")
	notDir := filepath.Join(write("not-a-dir", ""), "images")
	isConf := write("is.conf", "[storage]\ngraphroot = \""+s.graph+"\"\nrunroot = \""+s.run+"\"\nimagestore = \""+notDir+"\"\n")
	before := s.ok("layers", "--json")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--storage-conf", roConf, "layers"}, "additional image store /mnt/nfs/images (storage.conf additionalimagestores): /mnt/nfs/images does not exist: not a cs-snapshotter root"},
		{[]string{"--storage-conf", isConf, "layers"}, "image store " + notDir + " (--image-store, storage.conf imagestore): create root: mkdir " + filepath.Dir(notDir) + ": not a directory"},
		{[]string{"--graph", s.graph, "--run", s.run, "--image-store", s.graph, "layers"}, "image store " + s.graph + " (--image-store, storage.conf imagestore): it is the store's graph root"},
		{[]string{"--graph", s.graph, "--run", s.run, "--image-store", "/srv/images", "--containerd", "/nonexistent.sock", "layers"}, "image store /srv/images (--image-store, storage.conf imagestore): not supported by cs-snapshotter with a store opened through containerd (--containerd): give it to the daemon instead (serve --image-store)"},
		{[]string{"--graph", s.graph, "--run", s.run, "--image-store", s.graph, "serve"}, "serve: image_store: \"" + s.graph + "\" is the root itself"},
		{[]string{"--graph", s.graph, "--run", s.run, "--storage-opt", "overlay.imagestore=/mnt/a", "--storage-opt", "overlay.imagestore=/mnt/b", "layers"}, "additional image store /mnt/a (storage option overlay.imagestore): /mnt/a does not exist"},
		{[]string{"--graph", s.graph, "--run", s.run, "--storage-opt", "overlay.additionalimagestores=/mnt/c,/mnt/d", "create-layer"}, "additional image store /mnt/c (storage option overlay.additionalimagestores): /mnt/c does not exist"},
		{[]string{"--graph", s.graph, "--run", s.run, "layers", "--image-store", s.graph + "/"}, "image store " + s.graph},
		{[]string{"--storage-conf", roConf, "serve"}, "serve: additional image store /mnt/nfs/images (additional_image_stores): "},
	} {
		r := runCLI(t, nil, tc.args...)
		if r.code != 1 || r.stdout != "" || r.stderr != "cs-snapshotter: "+tc.want+"\n" && !strings.HasPrefix(r.stderr, "cs-snapshotter: "+tc.want) {
			t.Errorf("%q: %s; want exit 1 and %q", tc.args, r, tc.want)
		}
	}
	// The flag given wins over the file's stores (as --storage-opt
	// replaces the file's driver options in containers/storage).
	if r := runCLI(t, nil, "--storage-conf", roConf, "--storage-opt", "overlay.mountopt=nodev", "layers", "-q"); r.code != 0 || r.stdout != id+"\n" {
		t.Errorf("--storage-opt over the file's additionalimagestores: %s", r)
	}
	if after := s.ok("layers", "--json"); after != before {
		t.Errorf("the refused commands changed the store:\nbefore %s\nafter  %s", before, after)
	}

	// Bad files: exit 1, naming the file (and the line).
	for _, tc := range []struct{ data, want string }{
		{"[storage]\ndriver = \"vfs\"\n", `bad.conf: storage.driver: storage driver "vfs" is not supported: cs-snapshotter stores layers with overlay only`},
		{"[storage]\n\ngraphroot = \"/x\n", "bad.conf:3:"},
		{"[storage]\ntransient_store = \"yes\"\n", "bad.conf:2:19: storage.transient_store: want a boolean, not a TOML string"},
	} {
		p := write("bad.conf", tc.data)
		r := runCLI(t, nil, "--storage-conf", p, "layers")
		if r.code != 1 || !strings.HasPrefix(r.stderr, "cs-snapshotter: "+filepath.Dir(p)+"/"+tc.want) {
			t.Errorf("%q: %s; want exit 1 and %q", tc.data, r, tc.want)
		}
	}
	if r := runCLI(t, nil, "--storage-conf", filepath.Join(dir, "none.conf"), "layers"); r.code != 1 || !strings.Contains(r.stderr, "none.conf: no such file") {
		t.Errorf("missing --storage-conf file: %s", r)
	}

	// A graphroot that is a containers/storage store is refused, and left
	// untouched.
	cs := filepath.Join(t.TempDir(), "containers-storage")
	if err := os.MkdirAll(filepath.Join(cs, "overlay-layers"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cs, "overlay-layers", "layers.json"), []byte("[]"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := write("cs.conf", "[storage]\ndriver = \"overlay\"\ngraphroot = \""+cs+"\"\nrunroot = \""+filepath.Join(dir, "run")+"\"\n")
	r = runCLI(t, nil, "--storage-conf", p, "layers")
	if r.code != 1 || !strings.Contains(r.stderr, "graphroot "+cs+" is a containers/storage store") {
		t.Errorf("containers/storage graphroot: %s", r)
	}
	if entries, _ := os.ReadDir(cs); len(entries) != 1 {
		t.Errorf("the containers/storage root was written to: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); err == nil {
		t.Error("the run root was made")
	}
}

// serve takes the storage.conf's graphroot and runroot as --root and
// --run-root, and its imagestore and additionalimagestores as the daemon's
// image_store and additional_image_stores.
func TestCLIServeStorageConf(t *testing.T) {
	s := newCLIStore(t)
	ro := newCLIStore(t)
	roLayer := createdID(t, ro.ok("create-layer", "-n", "shared"), "shared")
	images := filepath.Join(t.TempDir(), "images")
	conf := filepath.Join(t.TempDir(), "storage.conf")
	if err := os.WriteFile(conf, []byte("[storage]\ndriver = \"overlay\"\ngraphroot = \""+s.graph+"\"\nrunroot = \""+s.run+"\"\nimagestore = \""+images+"\"\n"+
		"[storage.options]\nadditionalimagestores = [\""+ro.graph+"\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &proc{stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, "--storage-conf", conf, "serve")
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.exited })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(s.run, "cs-snapshotter.sock")); err == nil {
			break
		}
		select {
		case <-p.exited:
			t.Fatalf("serve exited: %v\n%s", p.err, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket under the storage.conf's runroot\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	createdID(t, s.ok("create-layer", "-n", "x"), "x")
	if r := s.expect(0, "", "status"); !strings.Contains(r.stderr, "Store: daemon") {
		t.Errorf("status: %s", r)
	}
	// The daemon holds the image store, and serves the read-only one:
	// the CLI through it sees the read-only store's layer.
	lock, err := os.ReadFile(filepath.Join(images, "lock"))
	if err != nil || !strings.Contains(string(lock), "cs-snapshotter serve") {
		t.Errorf("image store lock: %q %v", lock, err)
	}
	if out := s.ok("layers", "-q"); !strings.Contains(out, roLayer) {
		t.Errorf("layers through the daemon do not show the read-only store's %s:\n%s", roLayer, out)
	}
	if out := ro.ok("layers", "-q"); out != roLayer+"\n" {
		t.Errorf("the read-only store changed: %q", out)
	}
	// The daemon serves its image store only with the root: opening it
	// alone, or naming it as the store's image store too, fails at once
	// (no waiting for the lock) saying which root to open, and changes
	// nothing.
	before := s.ok("layers", "-q")
	want := "root " + images + " is in use by pid "
	for _, args := range [][]string{
		{"--graph", images, "--run", filepath.Join(t.TempDir(), "run"), "layers"},
		{"--graph", s.graph, "--run", s.run, "--image-store", images, "layers"},
	} {
		start := time.Now()
		r := runCLI(t, nil, args...)
		if r.code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "as the image store of "+s.graph+": open "+s.graph+" instead") {
			t.Errorf("%q: %s; want exit 1 and %q... as the image store of %s", args, r, want, s.graph)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("%q took %v: it waited for the daemon's lock", args, d)
		}
	}
	if after := s.ok("layers", "-q"); after != before {
		t.Errorf("the refused opens changed the store:\n%s\n%s", before, after)
	}
}
