// Command mkimage writes the test busybox image (see package
// test/imagebuild) as an OCI image-layout archive for `ctr images import`
// or `nerdctl load`.
//
//	mkimage -o out.tar -name docker.io/library/cs-busybox:latest [-layers 3] [-fidelity] [-bigfile BYTES] [-v]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/cs-snapshotter/cs-snapshotter/test/imagebuild"
)

func main() {
	out := flag.String("o", "", "output archive `path` (required; - for stdout)")
	name := flag.String("name", imagebuild.DefaultName, "full image `reference`")
	layers := flag.Int("layers", 3, "number of layers (1: busybox and files; 2: adds a file; 3: whiteout and opaque dir; more: a file each)")
	busybox := flag.String("busybox", imagebuild.DefaultBusybox, "statically linked busybox to copy into the image")
	hello := flag.String("hello", imagebuild.HelloText, "content of "+imagebuild.HelloPath)
	fidelity := flag.Bool("fidelity", false, "add a layer with ownership, special modes, links, a fifo, a device node, a long name and an xattr under "+imagebuild.FidelityDir)
	bigFile := flag.Int("bigfile", 0, "add a layer with a pseudo-random file of this many `bytes` at "+imagebuild.BigFilePath)
	verbose := flag.Bool("v", false, "print digests of the image's blobs and chain IDs to stderr")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s -o out.tar [-name REF] [-layers N]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	opts := imagebuild.Options{Name: *name, Layers: *layers, Busybox: *busybox, Hello: *hello, Fidelity: *fidelity, BigFileSize: *bigFile}
	var (
		res *imagebuild.Result
		err error
	)
	if *out == "-" {
		res, err = imagebuild.Build(os.Stdout, opts)
	} else {
		res, err = imagebuild.BuildFile(*out, opts)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
	if *verbose {
		fmt.Fprintf(os.Stderr, "image    %s\nmanifest %s\nconfig   %s\n", res.Name, res.Manifest.Digest, res.Config.Digest)
		for i, l := range res.Layers {
			fmt.Fprintf(os.Stderr, "layer %d  %s diff_id %s chain_id %s (%s)\n", i+1, l.Descriptor.Digest, l.DiffID, l.ChainID, l.Comment)
		}
	}
}
