package contentstore_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cs-snapshotter/cs-snapshotter/contentstore"
)

// The content benchmarks measure the store in-process ("inproc") and behind
// containerd's content gRPC server on a unix socket, called through
// containerd's proxy client ("socket"), the path containerd's content proxy
// plugin takes. Stores go under CS_BENCH_DIR (default: the system's
// temporary directory, so the disk's fsync cost is part of the numbers).
//
//	go test -run '^$' -bench BenchmarkContent -benchtime=5x ./contentstore/

const benchChunk = 1 << 20 // content.Copy's buffer: what containerd sends per Write message

type benchSubject struct {
	name string
	cs   content.Store
}

func benchSubjects(b *testing.B) []benchSubject {
	b.Helper()
	dir, err := os.MkdirTemp(os.Getenv("CS_BENCH_DIR"), "csb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	_, cs, closeFn, err := newStore(context.Background(), dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeFn() })

	conn := serveContent(b, cs, dir)
	return []benchSubject{
		{"inproc", cs},
		{"socket", contentproxy.NewContentStore(contentapi.NewContentClient(conn))},
	}
}

// serveContent serves cs with the content gRPC service on a unix socket in
// dir, with the daemon's message limits, and returns a connection to it.
func serveContent(tb testing.TB, cs content.Store, dir string) *grpc.ClientConn {
	tb.Helper()
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
		grpc.MaxSendMsgSize(defaults.DefaultMaxSendMsgSize),
	)
	contentapi.RegisterContentServer(srv, contentstore.NewService(cs))
	go srv.Serve(l)
	tb.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize),
		))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

func randomBytes(b *testing.B, n int) []byte {
	p := make([]byte, n)
	if _, err := rand.Read(p); err != nil {
		b.Fatal(err)
	}
	return p
}

// ingest writes data in chunks of chunk bytes and commits it, as
// content.Copy does; the store computes the digest.
func ingest(ctx context.Context, cs content.Store, ref string, data []byte, chunk int) (digest.Digest, error) {
	w, err := cs.Writer(ctx, content.WithRef(ref),
		content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data))}))
	if err != nil {
		return "", err
	}
	defer w.Close()
	for p := data; len(p) > 0; {
		n := min(chunk, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			return "", err
		}
		p = p[n:]
	}
	if err := w.Commit(ctx, int64(len(data)), ""); err != nil {
		return "", err
	}
	return w.Digest(), nil
}

// BenchmarkContentIngest: Writer, writes and Commit, the blob deleted again
// untimed. 256MiB and 4KiB are written 1 MiB at a time (or whole when
// smaller), as containerd's content.Copy and the proxy send them;
// 16MiB-240B is written 240 bytes at a time, as compress/flate hands its
// output to the writer beneath a gzip.Writer (the daemon's tar-splits), in
// process only (over the socket every write is a call).
func BenchmarkContentIngest(b *testing.B) {
	ctx := context.Background()
	cases := []struct {
		name        string
		size, chunk int
		socket      bool
	}{
		{"256MiB", 256 << 20, benchChunk, true},
		{"4KiB", 4 << 10, benchChunk, true},
		{"16MiB-240B", 16 << 20, 240, false},
	}
	for _, sub := range benchSubjects(b) {
		for _, c := range cases {
			if sub.name == "socket" && !c.socket {
				continue
			}
			data := randomBytes(b, c.size)
			b.Run(sub.name+"/"+c.name, func(b *testing.B) {
				b.SetBytes(int64(c.size))
				for i := 0; b.Loop(); i++ {
					// A fresh first bytes per iteration: a new blob each time.
					data[0], data[1] = byte(i), byte(i>>8)
					dgst, err := ingest(ctx, sub.cs, fmt.Sprintf("bench-%d", i), data, c.chunk)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if err := sub.cs.Delete(ctx, dgst); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkContentRead: a 256 MiB blob read through, 1 MiB at a time
// ("Sequential", one ReaderAt per op), and 4 KiB read at random offsets
// with a ReaderAt opened and closed for each ("SmallReadAt": what every
// Read call of the gRPC server does; over the socket, every ReadAt of the
// proxy's ReaderAt is one such call).
func BenchmarkContentRead(b *testing.B) {
	ctx := context.Background()
	const size = 256 << 20
	data := randomBytes(b, size)
	for _, sub := range benchSubjects(b) {
		// Both subjects are the same store: the second finds the blob there.
		dgst := digest.FromBytes(data)
		if _, err := ingest(ctx, sub.cs, "read-"+sub.name, data, benchChunk); err != nil && !errdefs.IsAlreadyExists(err) {
			b.Fatal(err)
		}
		desc := ocispec.Descriptor{Digest: dgst, Size: size}
		b.Run(sub.name+"/Sequential", func(b *testing.B) {
			b.SetBytes(size)
			buf := make([]byte, benchChunk)
			for b.Loop() {
				ra, err := sub.cs.ReaderAt(ctx, desc)
				if err != nil {
					b.Fatal(err)
				}
				// A plain writer, so CopyBuffer uses buf (io.Discard would
				// read in 8 KiB pieces).
				n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, content.NewReader(ra), buf)
				ra.Close()
				if err != nil || n != size {
					b.Fatal(n, err)
				}
			}
		})
		b.Run(sub.name+"/SmallReadAt", func(b *testing.B) {
			b.SetBytes(4 << 10)
			buf := make([]byte, 4<<10)
			r := mrand.New(mrand.NewPCG(1, 2))
			for b.Loop() {
				ra, err := sub.cs.ReaderAt(ctx, desc)
				if err != nil {
					b.Fatal(err)
				}
				off := r.Int64N(size - int64(len(buf)))
				if n, err := ra.ReadAt(buf, off); err != nil || n != len(buf) {
					b.Fatal(n, err)
				}
				ra.Close()
			}
		})
	}
}
