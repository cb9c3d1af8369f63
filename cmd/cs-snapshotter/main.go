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

	containerd          string
	containerdNamespace string
	containerdSnapshot  string
}

func (g *globalOptions) register(fs *flagSet) {
	fs.stringVar(&g.run, []string{"--run", "-R"}, "Root of the runtime state tree")
	fs.stringVar(&g.graph, []string{"--graph", "-g"}, "Root of the storage tree")
	fs.boolVar(&g.transient, []string{"--transient-store"}, "Transient store")
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

// rawServe runs `serve`. Global flags given before it become the daemon's
// defaults; serve's own flags override them.
func rawServe(ctx context.Context, g *globalOptions, set *flagSet, args []string) error {
	if err := checkDriver(g.driver); err != nil {
		return err
	}
	var pre []string
	if set.isSet("--graph") {
		pre = append(pre, "--root", g.graph)
	}
	if set.isSet("--run") {
		pre = append(pre, "--run-root", g.run)
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
	// As containers-storage's defaults: $STORAGE_DRIVER and $STORAGE_OPTS
	// (comma-separated) stand in for flags not given.
	if env := os.Getenv("STORAGE_DRIVER"); env != "" && !global.isSet("--storage-driver") && !fs.isSet("--storage-driver") {
		g.driver = env
	}
	if env := os.Getenv("STORAGE_OPTS"); env != "" && len(g.storageOpts) == 0 {
		g.storageOpts = strings.Split(env, ",")
	}
	if err := checkDriver(g.driver); err != nil {
		errorf(stderr, "%v", err)
		return 1
	}
	storeOptions, err := g.storeOptions(global.isSet("--graph") || fs.isSet("--graph"), global.isSet("--run") || fs.isSet("--run"))
	if err != nil {
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

// storeOptions fills in what the flags left unset: the root and run root
// from the daemon's configuration file when it exists, else the defaults.
func (g *globalOptions) storeOptions(graphSet, runSet bool) (storage.StoreOptions, error) {
	graph, run := g.graph, g.run
	cfg, err := config.Load(config.DefaultPath, false)
	if err != nil {
		return storage.StoreOptions{}, err
	}
	if !graphSet {
		graph = cfg.Root
	}
	if !runSet {
		run = cfg.RunRoot
	}
	return storage.StoreOptions{
		RunRoot:            run,
		GraphRoot:          graph,
		GraphDriverName:    g.driver,
		GraphDriverOptions: g.storageOpts,
		TransientStore:     g.transient,

		ContainerdAddress:     g.containerd,
		ContainerdNamespace:   g.containerdNamespace,
		ContainerdSnapshotter: g.containerdSnapshot,
		MaxLayerSize:          cfg.Snapshotter.MaxLayerSize,
	}, nil
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
