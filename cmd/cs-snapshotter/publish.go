package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/cs-snapshotter/cs-snapshotter/publish"
)

func init() {
	register(&command{
		names:       []string{"publish"},
		optionsHelp: "[options [...]] imageNameOrID",
		usage:       "Make an image of the store (or of a read-only image store) an image of containerd, unpacked for the cs snapshotter, without copying its layers",
		minArgs:     1,
		maxArgs:     1,
		flags: func(fs *flagSet, o *options) {
			fs.listVar(&o.names, []string{"--name", "-n"}, "Image name in containerd (default: the image's names)")
			fs.stringVar(&o.address, []string{"--address", "-a"}, "containerd's socket (default $CONTAINERD_ADDRESS, else "+defaults.DefaultAddress+")")
			fs.stringVar(&o.namespace, []string{"--namespace"}, "containerd namespace (default $CONTAINERD_NAMESPACE, else \"default\"; the CRI's is \"k8s.io\")")
			fs.stringVar(&o.snapshotter, []string{"--snapshotter"}, "Name of cs-snapshotter's proxy plugin in containerd's config (default \""+publish.DefaultSnapshotter+"\")")
			jsonFlag(fs, o)
		},
		action: cmdPublish,
	})
}

func cmdPublish(c *cli, args []string) (int, error) {
	// Defaults as ctr's: the environment, then containerd's.
	address, ns := c.opts.address, c.opts.namespace
	if address == "" {
		address = cmp.Or(os.Getenv("CONTAINERD_ADDRESS"), defaults.DefaultAddress)
	}
	if ns == "" {
		ns = cmp.Or(os.Getenv(namespaces.NamespaceEnvVar), namespaces.Default)
	}
	// containerd's dialer waits for a socket file that is not there:
	// say so at once.
	if sock, ok := strings.CutPrefix(address, "unix://"); ok || !strings.Contains(address, "://") {
		if _, err := os.Stat(sock); err != nil {
			return 1, fmt.Errorf("connect to containerd at %s: %w", address, err)
		}
	}
	ctrd, err := client.New(address, client.WithDefaultNamespace(ns), client.WithTimeout(10*time.Second))
	if err != nil {
		return 1, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer ctrd.Close()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = ctrd.Version(vctx)
	cancel()
	if err != nil {
		return 1, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	res, err := publish.Image(ctx, c.store, ctrd, args[0], publish.Options{Names: c.opts.names, Snapshotter: c.opts.snapshotter})
	if err != nil {
		return 1, err
	}
	if c.opts.json {
		return c.outputJSON(res)
	}
	for _, name := range res.Names {
		fmt.Fprintf(c.stdout, "%s\n", name)
	}
	fmt.Fprintf(c.stderr, "image %s: manifest %s in containerd namespace %s; %d of %d layers taken from a read-only image store, %d layer blobs recorded without copying\n",
		res.ID, res.Manifest.Digest, ns, res.Shared, res.Layers, res.BlobsRecorded)
	return 0, nil
}
