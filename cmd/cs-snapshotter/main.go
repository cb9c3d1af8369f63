// Command cs-snapshotter runs the daemon containerd uses as a proxy
// snapshotter and content store (`cs-snapshotter serve`), and is a
// containers-storage compatible command line for the same store:
//
//	cs-snapshotter [global flags] COMMAND [flags] [args]
//
// The global flags, the layer, image and container commands, their aliases,
// flags, output (text and --json) and exit statuses follow the
// containers-storage command of containers/storage v1.50.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/containerd/log"

	storage "github.com/cs-snapshotter/cs-snapshotter"
	"github.com/cs-snapshotter/cs-snapshotter/config"
	"github.com/cs-snapshotter/cs-snapshotter/storageconf"
)

const progName = "cs-snapshotter"

// globalOptions are containers-storage's global flags. They are accepted
// before the command and, as containers-storage does, among its flags.
type globalOptions struct {
	graph       string
	run         string
	driver      string
	storageOpts []string
	debug       bool
	transient   bool
	imageStore  string

	// storageConf names a containers-storage storage.conf to read;
	// defaultStorageConf reads the one containers/storage would.
	storageConf        string
	defaultStorageConf bool

	containerd          string
	containerdNamespace string
	containerdSnapshot  string
}

func (g *globalOptions) register(fs *flagSet) {
	fs.stringVar(&g.run, []string{"--run", "-R"}, "Root of the runtime state tree")
	fs.stringVar(&g.graph, []string{"--graph", "-g"}, "Root of the storage tree")
	fs.boolVar(&g.transient, []string{"--transient-store"}, "Transient store")
	fs.stringVar(&g.imageStore, []string{"--image-store"}, "Root of the separate image store: new layers and images go there, containers stay in --graph")
	fs.stringVar(&g.storageConf, []string{"--storage-conf"}, "Read this containers-storage storage.conf; flags given win over it")
	fs.boolVar(&g.defaultStorageConf, []string{"--default-storage-conf"}, "Read storage.conf where containers-storage does ($"+storageconf.EnvVar+", "+storageconf.OverrideFile+", "+storageconf.SystemFile+")")
	fs.stringVar(&g.driver, []string{"--storage-driver", "-s"}, "Storage driver to use: overlay ($STORAGE_DRIVER)")
	fs.listVar(&g.storageOpts, []string{"--storage-opt"}, "Set storage driver options ($STORAGE_OPTS)")
	fs.boolVar(&g.debug, []string{"--debug", "-D"}, "Print debugging information")
	fs.stringVar(&g.containerd, []string{"--containerd"}, "Open the store through containerd at this socket (its snapshotter and content store), so containerd records what the store makes")
	fs.stringVar(&g.containerdNamespace, []string{"--containerd-namespace"}, "containerd namespace for --containerd (default \"default\")")
	fs.stringVar(&g.containerdSnapshot, []string{"--containerd-snapshotter"}, "Name of cs-snapshotter's proxy plugin in containerd's config, for --containerd (default \"cs\")")
}

// options holds every command's flags; a command registers the ones it has.
type options struct {
	json  bool
	quiet bool
	tree  bool

	names    []string
	id       string
	label    string
	readOnly bool
	file     string

	hostUIDMap, hostGIDMap bool
	uidMap, gidMap         string
	subUIDMap, subGIDMap   string

	mountOpts string
	force     bool

	metadata     string
	metadataFile string

	existLayer, existImage, existContainer bool

	digest     string
	testDelete bool

	diffUncompressed, diffGzip, diffBzip2, diffXz bool

	// publish: containerd's socket, namespace and cs's plugin name there.
	address, namespace, snapshotter string
}

// cli is what a command's action works with.
type cli struct {
	name   string // the command as typed (an alias, maybe)
	store  storage.Store
	global *globalOptions
	opts   *options
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// stderrIsTerminal: show progress of long operations.
	stderrIsTerminal bool
	// closed: the action released the store (shutdown).
	closed bool
}

type command struct {
	names       []string
	optionsHelp string
	usage       string
	minArgs     int
	maxArgs     int // -1: any number
	flags       func(fs *flagSet, o *options)
	action      func(c *cli, args []string) (int, error)

	// raw commands (serve, config) parse their own arguments and open no store.
	raw func(ctx context.Context, g *globalOptions, set *flagSet, args []string) error
}

var commands []*command

func register(c ...*command) { commands = append(commands, c...) }

func findCommand(name string) *command {
	for _, c := range commands {
		for _, n := range c.names {
			if n == name {
				return c
			}
		}
	}
	return nil
}

func jsonFlag(fs *flagSet, o *options) {
	fs.boolVar(&o.json, []string{"--json", "-j"}, "Prefer JSON output")
}

func init() {
	register(
		&command{
			names:       []string{"serve"},
			optionsHelp: "[--config FILE] [--root DIR] [--run-root DIR] [--address PATH] [--log-level LEVEL]",
			usage:       "Run the daemon (--graph and --run before it set --root and --run-root)",
			raw:         rawServe,
		},
		&command{
			names:       []string{"config"},
			optionsHelp: "default",
			usage:       "Print the default daemon configuration",
			raw: func(ctx context.Context, _ *globalOptions, _ *flagSet, args []string) error {
				return runConfig(ctx, args)
			},
		},
	)
}

// rawServe runs `serve`. Global flags given before it, and the graphroot
// and runroot of the storage.conf read, become the daemon's defaults;
// serve's own flags override them.
func rawServe(ctx context.Context, g *globalOptions, set *flagSet, args []string) error {
	conf, err := g.loadStorageConf(os.Stderr)
	if err != nil {
		return err
	}
	o, err := g.resolve(set.isSet, os.Getenv, conf, config.Config{})
	if err != nil {
		return err
	}
	if err := checkDriver(o.GraphDriverName); err != nil {
		return err
	}
	// What the flags or the storage.conf set; the rest is the daemon's
	// own configuration.
	var file storageconf.Options
	if conf != nil {
		file = conf.Options
	}
	var pre []string
	if set.isSet("--graph") || file.GraphRoot != "" {
		pre = append(pre, "--root", o.GraphRoot)
	}
	if set.isSet("--run") || file.RunRoot != "" {
		pre = append(pre, "--run-root", o.RunRoot)
	}
	for _, s := range storage.ImageStorePaths(o) {
		if s.Separate {
			pre = append(pre, "--image-store", s.Path)
		} else {
			pre = append(pre, "--additional-image-store", s.Path)
		}
	}
	if g.debug {
		pre = append(pre, "--log-level", "debug")
	}
	return runServe(ctx, append(pre, args...))
}

func checkDriver(name string) error {
	if name != "overlay" {
		return fmt.Errorf("storage driver %q is not supported: cs-snapshotter stores layers with overlay only", name)
	}
	return nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func usage(w io.Writer, global *flagSet) {
	fmt.Fprintf(w, "Usage: %s [global options] command [options [...]]\n\nCommands:\n\n", progName)
	list := append([]*command(nil), commands...)
	sort.Slice(list, func(i, j int) bool { return list[i].names[0] < list[j].names[0] })
	for _, c := range list {
		fmt.Fprintf(w, "  %-30s%s\n", c.names[0], c.usage)
	}
	fmt.Fprintf(w, "\nGlobal options:\n")
	global.printDefaults(w)
}

func commandUsage(w io.Writer, name string, c *command, fs *flagSet) {
	fmt.Fprintf(w, "Usage: %s %s %s\n\n%s\n", progName, name, c.optionsHelp, c.usage)
	if len(c.names) > 1 {
		fmt.Fprintf(w, "\nAliases: %s\n", strings.Join(c.names, ", "))
	}
	fmt.Fprintf(w, "\nOptions:\n")
	fs.printDefaults(w)
}

func errorf(w io.Writer, format string, a ...any) {
	fmt.Fprintf(w, progName+": "+format+"\n", a...)
}

// run runs the command line args and returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := globalOptions{graph: config.DefaultRoot, run: config.DefaultRunRoot, driver: "overlay"}
	global := newFlagSet(progName)
	g.register(global)
	if err := global.parse(args); err != nil {
		if errors.Is(err, errHelp) {
			usage(stdout, global)
			return 0
		}
		errorf(stderr, "%v (see '%s --help')", err, progName)
		return 1
	}
	args = global.args
	if len(args) == 0 {
		usage(stderr, global)
		return 1
	}
	name := args[0]
	if name == "help" {
		usage(stdout, global)
		return 0
	}
	cmd := findCommand(name)
	if cmd == nil {
		errorf(stderr, "%s: unrecognized command (see '%s --help')", name, progName)
		return 1
	}
	if cmd.raw != nil {
		err := cmd.raw(context.Background(), &g, global, args[1:])
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			errorf(stderr, "%s: %v", name, err)
			return 1
		}
		return 0
	}

	var o options
	fs := newFlagSet(name)
	g.register(fs) // the values given before the command are the defaults
	if cmd.flags != nil {
		cmd.flags(fs, &o)
	}
	if err := fs.parse(args[1:]); err != nil {
		if errors.Is(err, errHelp) {
			commandUsage(stdout, name, cmd, fs)
			return 0
		}
		errorf(stderr, "%s: %v (see '%s %s --help')", name, err, progName, name)
		return 1
	}
	args = fs.args
	if len(args) < cmd.minArgs {
		errorf(stderr, "%s: more arguments required (usage: %s %s %s)", name, progName, name, cmd.optionsHelp)
		return 1
	}
	if cmd.maxArgs >= 0 && len(args) > cmd.maxArgs {
		errorf(stderr, "%s: too many arguments (%s) (usage: %s %s %s)", name, strings.Join(args, " "), progName, name, cmd.optionsHelp)
		return 1
	}
	conf, err := g.loadStorageConf(stderr)
	if err != nil {
		errorf(stderr, "%v", err)
		return 1
	}
	cfg, err := config.Load(config.DefaultPath, false)
	if err != nil {
		errorf(stderr, "%v", err)
		return 1
	}
	isSet := func(name string) bool { return global.isSet(name) || fs.isSet(name) }
	storeOptions, err := g.resolve(isSet, os.Getenv, conf, cfg)
	if err != nil {
		errorf(stderr, "%v", err)
		return 1
	}
	if err := checkDriver(storeOptions.GraphDriverName); err != nil {
		errorf(stderr, "%v", err)
		return 1
	}
	setupLogging(stderr, g.debug, storeOptions)

	store, err := storage.GetStore(storeOptions)
	if err != nil {
		errorf(stderr, "%v", err)
		return 1
	}
	c := &cli{
		name:             name,
		store:            store,
		global:           &g,
		opts:             &o,
		stdin:            stdin,
		stdout:           stdout,
		stderr:           stderr,
		stderrIsTerminal: isTerminal(stderr),
	}
	code, err := cmd.action(c, args)
	if err != nil {
		errorf(stderr, "%v", err)
		if code == 0 {
			code = 1
		}
	}
	if !c.closed {
		// Release the store, leaving mounted layers mounted (their counts
		// live in the run root), as containers-storage does at exit.
		store.Free()
	}
	return code
}

// loadStorageConf reads the storage.conf --storage-conf names, or with
// --default-storage-conf the one containers/storage would read; nil when
// neither is given (or no file is there). Its warnings go to stderr.
func (g *globalOptions) loadStorageConf(stderr io.Writer) (*storageconf.Config, error) {
	var conf *storageconf.Config
	var err error
	switch {
	case g.storageConf != "":
		conf, err = storageconf.Load(g.storageConf)
	case g.defaultStorageConf:
		conf, err = storageconf.LoadDefault()
	}
	if err != nil || conf == nil {
		return nil, err
	}
	for _, w := range conf.Warnings {
		fmt.Fprintf(stderr, "%s: warning: %s\n", progName, w)
	}
	return conf, nil
}

// resolve makes the store's options. Each comes from the first of: the
// flag, when given (isSet); $STORAGE_DRIVER or $STORAGE_OPTS (getenv), as
// containers-storage's defaults; the storage.conf read (conf, may be nil);
// the daemon's configuration file (cfg: root and run root); the defaults.
// As in containers/storage (and podman), --storage-opt or $STORAGE_OPTS
// replace the file's driver options as a whole, additionalimagestores
// included.
func (g *globalOptions) resolve(isSet func(string) bool, getenv func(string) string, conf *storageconf.Config, cfg config.Config) (storage.StoreOptions, error) {
	var file storageconf.Options
	if conf != nil {
		file = conf.Options
	}
	o := storage.StoreOptions{
		GraphRoot:          g.graph,
		RunRoot:            g.run,
		GraphDriverName:    g.driver,
		GraphDriverOptions: g.storageOpts,
		TransientStore:     g.transient,
		ImageStore:         g.imageStore,

		ContainerdAddress:     g.containerd,
		ContainerdNamespace:   g.containerdNamespace,
		ContainerdSnapshotter: g.containerdSnapshot,
		MaxLayerSize:          cfg.Snapshotter.MaxLayerSize,
	}
	if !isSet("--graph") {
		switch {
		case file.GraphRoot != "":
			o.GraphRoot = file.GraphRoot
			// containers/storage's default storage.conf names its own
			// store: cs-snapshotter must not write into it.
			if storageconf.IsContainersStorageRoot(o.GraphRoot) {
				return o, fmt.Errorf("%s: graphroot %s is a containers/storage store, which cs-snapshotter does not read and must not write into; give cs-snapshotter its own root (--graph)", conf.File, o.GraphRoot)
			}
		case cfg.Root != "":
			o.GraphRoot = cfg.Root
		}
	}
	if !isSet("--run") {
		switch {
		case file.RunRoot != "":
			o.RunRoot = file.RunRoot
		case cfg.RunRoot != "":
			o.RunRoot = cfg.RunRoot
		}
	}
	if !isSet("--storage-driver") {
		if env := getenv("STORAGE_DRIVER"); env != "" {
			o.GraphDriverName = env
		} else if file.GraphDriverName != "" {
			o.GraphDriverName = file.GraphDriverName
		}
	}
	if len(g.storageOpts) == 0 {
		if env := getenv("STORAGE_OPTS"); env != "" {
			o.GraphDriverOptions = strings.Split(env, ",")
		} else {
			o.GraphDriverOptions = file.GraphDriverOptions
			o.ROImageStores = file.ROImageStores
		}
	}
	if !isSet("--transient-store") {
		o.TransientStore = file.TransientStore
	}
	if !isSet("--image-store") {
		o.ImageStore = file.ImageStore
	}
	return o, nil
}

func setupLogging(stderr io.Writer, debug bool, o storage.StoreOptions) {
	log.L.Logger.SetOutput(stderr)
	if !debug {
		_ = log.SetLevel("error")
		return
	}
	_ = log.SetLevel("debug")
	log.L.Debugf("Root: %s", o.GraphRoot)
	log.L.Debugf("Run Root: %s", o.RunRoot)
	log.L.Debugf("Driver Name: %s", o.GraphDriverName)
	log.L.Debugf("Driver Options: %s", o.GraphDriverOptions)
}
