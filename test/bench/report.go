package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

func (r *Results) op(n int, subj, op string) (opResult, bool) {
	for _, o := range r.SnapOps {
		if o.Snapshots == n && o.Subject == subj && o.Op == op {
			return o, true
		}
	}
	return opResult{}, false
}

type goal struct {
	What   string
	Target string
	Got    string
	Met    bool
	Have   bool
}

func (r *Results) goals() []goal {
	var g []goal
	yes := func(what, target, got string, met, have bool) { g = append(g, goal{what, target, got, met, have}) }
	imp := r.Import
	yes("import+unpack cs / overlayfs (same-round median)", "≤ 0.70×", fmt.Sprintf("%.2f×", imp.MedianCSOverlay), imp.MedianCSOverlay <= 0.7, imp.MedianCSOverlay > 0)
	yes("import+unpack cs / tar -xzf (same-round median)", "≤ 1.40×", fmt.Sprintf("%.2f×", imp.MedianCSTar), imp.MedianCSTar <= 1.4, imp.MedianCSTar > 0)
	yes("container start cs / overlayfs (median)", "≤ 1.05×", fmt.Sprintf("%.2f×", r.Start.Ratio), r.Start.Ratio <= 1.05, r.Start.Ratio > 0)
	yes("Diff reconstruction, warm cache", "≥ 1000 MB/s", fmt.Sprintf("%.0f MB/s", r.Diff.MBps), r.Diff.MBps >= 1000, r.Diff.MBps > 0)
	// "socket": a server in the bench's process; "process": a serve
	// process, as containerd reaches the daemon.
	for _, via := range []string{"socket", "process"} {
		for _, n := range []int{1000, 10000} {
			if s, ok := r.op(n, via, "Stat"); ok {
				yes(fmt.Sprintf("Stat p50 over the socket (%s), %d", via, n), "≤ 150 µs", fmt.Sprintf("%.0f µs", s.P50us), s.P50us <= 150, true)
			}
			s, ok1 := r.op(n, via, "Prepare")
			i, ok2 := r.op(n, "inproc", "Prepare")
			if ok1 && ok2 {
				yes(fmt.Sprintf("Prepare p50 %s / in-process, %d", via, n), "≤ 1.5×", fmt.Sprintf("%.2f× (%.0f / %.0f µs)", s.P50us/i.P50us, s.P50us, i.P50us), s.P50us/i.P50us <= 1.5, true)
			}
		}
		if s, ok := r.op(10000, via, "Remove"); ok {
			yes(fmt.Sprintf("Remove p50 over the socket (%s), 10000", via), "≤ 1 ms", fmt.Sprintf("%.2f ms", s.P50us/1e3), s.P50us <= 1000, true)
		}
		if s, ok := r.op(10000, via, "Walk"); ok {
			yes(fmt.Sprintf("Walk of 10000 over the socket (%s, p50)", via), "≤ 50 ms", fmt.Sprintf("%.1f ms", s.P50us/1e3), s.P50us <= 50000, true)
		}
	}
	return g
}

func printTable(w io.Writer, r *Results) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if im := r.Image; im != nil {
		fmt.Fprintf(w, "\nbig image: %d gzip layers (%s), %d entries, %.0f MB uncompressed, %.0f MB compressed\n", len(im.Layers),
			strings.Join(layerDirs(im), ", "), im.entries(), float64(im.tarSize())/1e6, float64(im.compressed())/1e6)
	}
	if r.CSConfig != "" {
		fmt.Fprintf(w, "cs-snapshotter's config adds (CS_TOML): %q\n", r.CSConfig)
	}
	for _, phase := range []struct {
		what string
		imp  ImportRes
	}{{"import+unpack", r.Import}, {pullTitle(r.PullMBps), r.Pull}} {
		imp := phase.imp
		if len(imp.Seconds) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s, cold cache, %d interleaved rounds\n", phase.what, r.Rounds)
		fmt.Fprintln(tw, "subject\tmedian s\trounds s\t")
		for _, s := range []string{"tar", "overlayfs", "cs"} {
			fmt.Fprintf(tw, "%s\t%.2f\t%s\t\n", s, imp.Median[s], floats(imp.Seconds[s], "%.2f"))
		}
		tw.Flush()
		fmt.Fprintf(w, "same-round ratios (median; per round): cs/overlayfs %.2f× (%s)  cs/tar %.2f× (%s)  overlayfs/tar %.2f×\n",
			imp.MedianCSOverlay, floats(imp.CSOverOverlay, "%.2f"), imp.MedianCSTar, floats(imp.CSOverTar, "%.2f"), imp.MedianOverlayOvTar)
	}
	if st := r.Start; st.Runs > 0 {
		fmt.Fprintf(w, "\ncontainer start (ctr run --rm ... /bin/true), %d runs each\n", st.Runs)
		fmt.Fprintln(tw, "subject\tmedian ms\tp90 ms\t")
		for _, s := range []string{"overlayfs", "cs"} {
			fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t\n", s, st.Median[s], st.P90[s])
		}
		tw.Flush()
		fmt.Fprintf(w, "cs/overlayfs (median): %.2f×\n", st.Ratio)
	}
	if len(r.SnapOps) > 0 {
		fmt.Fprintf(w, "\nsnapshot ops (cs daemon, default config), latency per call; socket: served from the bench's process, process: a cs-snapshotter serve process, overlay: containerd's overlayfs snapshotter in the bench's process\n")
		fmt.Fprintln(tw, "snapshots\top\tinproc p50\tinproc p99\tsocket p50\tsocket p99\tprocess p50\tprocess p99\toverlay p50\toverlay p99\tsocket/inproc p50\tprocess/inproc p50\tinproc/overlay p50\t")
		for _, o := range r.SnapOps {
			if o.Subject != "inproc" {
				continue
			}
			s, _ := r.op(o.Snapshots, "socket", o.Op)
			p, _ := r.op(o.Snapshots, "process", o.Op)
			ov, _ := r.op(o.Snapshots, "overlay", o.Op)
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", o.Snapshots, o.Op, dur(o.P50us), dur(o.P99us), dur(s.P50us), dur(s.P99us), dur(p.P50us), dur(p.P99us),
				dur(ov.P50us), dur(ov.P99us), ratio(s.P50us, o.P50us), ratio(p.P50us, o.P50us), ratio(o.P50us, ov.P50us))
		}
		tw.Flush()
	}
	if r.Diff.MBps > 0 {
		fmt.Fprintf(w, "\nDiff reconstruction (cs-snapshotter diff -u, warm cache): %.0f MB in %s s, median %.0f MB/s\n",
			float64(r.Diff.Bytes)/1e6, floats(r.Diff.Seconds, "%.2f"), r.Diff.MBps)
	}
	fmt.Fprintf(w, "\ngoals\n")
	for _, g := range r.goals() {
		m := "missed"
		if g.Met {
			m = "met"
		}
		if !g.Have {
			m = "not measured"
		}
		fmt.Fprintf(w, "  %-50s %-12s %-26s %s\n", g.What, g.Target, g.Got, m)
	}
}

func layerDirs(im *bigImage) []string {
	var s []string
	for _, l := range im.Layers {
		s = append(s, fmt.Sprintf("%s %.0f MB", l.Dir, float64(l.TarSize)/1e6))
	}
	return s
}

func floats(v []float64, f string) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf(f, x))
	}
	return strings.Join(s, " ")
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func dur(us float64) string {
	switch {
	case us == 0:
		return "–"
	case us >= 1000:
		return fmt.Sprintf("%.2f ms", us/1000)
	default:
		return fmt.Sprintf("%.1f µs", us)
	}
}

func bars(p *plot.Plot, names []string, vals []float64, c int) error {
	b, err := plotter.NewBarChart(plotter.Values(vals), vg.Points(28))
	if err != nil {
		return err
	}
	b.Color = plotutil.Color(c)
	b.LineStyle.Width = 0
	p.Add(b)
	p.NominalX(names...)
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys(vals), Labels: labelsOf(vals)})
	if err == nil {
		p.Add(labels)
	}
	return nil
}

func xys(v []float64) plotter.XYs {
	x := make(plotter.XYs, len(v))
	for i, y := range v {
		x[i] = plotter.XY{X: float64(i) - 0.15, Y: y}
	}
	return x
}

func labelsOf(v []float64) []string {
	var s []string
	for _, y := range v {
		if y >= 100 {
			s = append(s, fmt.Sprintf("%.0f", y))
		} else {
			s = append(s, fmt.Sprintf("%.2f", y))
		}
	}
	return s
}

func drawChart(r *Results, path string) error {
	// 1: import
	p1 := plot.New()
	p1.Title.Text = fmt.Sprintf("import+unpack, cold cache (median of %d)", r.Rounds)
	p1.Y.Label.Text = "seconds"
	if err := bars(p1, []string{"tar -xzf", "containerd overlayfs", "cs-snapshotter"},
		[]float64{r.Import.Median["tar"], r.Import.Median["overlayfs"], r.Import.Median["cs"]}, 0); err != nil {
		return err
	}
	p1.Y.Max *= 1.15
	// 2: start
	p2 := plot.New()
	p2.Title.Text = fmt.Sprintf("container start, ctr run --rm (%d runs)", r.Start.Runs)
	p2.Y.Label.Text = "ms (median)"
	if err := bars(p2, []string{"overlayfs", "cs", "overlayfs p90", "cs p90"},
		[]float64{r.Start.Median["overlayfs"], r.Start.Median["cs"], r.Start.P90["overlayfs"], r.Start.P90["cs"]}, 1); err != nil {
		return err
	}
	p2.Y.Max *= 1.15
	// 3: snapshot ops at the largest store, p50, log scale
	p3 := plot.New()
	n := 0
	for _, o := range r.SnapOps {
		n = max(n, o.Snapshots)
	}
	p3.Title.Text = fmt.Sprintf("snapshot op p50 at %d snapshots", n)
	p3.Y.Label.Text = "µs (log)"
	p3.Y.Scale = plot.LogScale{}
	p3.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	ops := []string{"Stat", "Mounts", "Prepare", "Remove", "Walk"}
	for si, subj := range []string{"inproc", "socket", "process", "overlay"} {
		var pts plotter.XYs
		for i, op := range ops {
			if o, ok := r.op(n, subj, op); ok && o.P50us > 0 {
				pts = append(pts, plotter.XY{X: float64(i) + float64(si)*0.2 - 0.3, Y: o.P50us})
			}
		}
		if len(pts) == 0 {
			continue
		}
		s, err := plotter.NewScatter(pts)
		if err != nil {
			return err
		}
		s.GlyphStyle.Color = plotutil.Color(si + 2)
		s.GlyphStyle.Shape = draw.BoxGlyph{}
		s.GlyphStyle.Radius = vg.Points(4)
		p3.Add(s)
		p3.Legend.Add(subj, s)
	}
	p3.Legend.Top = true
	p3.Legend.Left = true
	p3.NominalX(ops...)
	// 4: diff
	p4 := plot.New()
	p4.Title.Text = "Diff reconstruction, warm cache"
	p4.Y.Label.Text = "MB/s"
	if err := bars(p4, []string{"cs-snapshotter diff -u", "goal"}, []float64{r.Diff.MBps, 1000}, 4); err != nil {
		return err
	}
	p4.Y.Max *= 1.15

	const w, h = 30 * vg.Centimeter, 20 * vg.Centimeter
	img := vgimg.New(w, h)
	dc := draw.New(img)
	t := draw.Tiles{Rows: 2, Cols: 2, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{p1, p2}, {p3, p4}}
	canvases := plot.Align(plots, t, dc)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func pullTitle(mbps int) string {
	if mbps > 0 {
		return fmt.Sprintf("pull+unpack from a registry on 127.0.0.1 sending %d MB/s", mbps)
	}
	return "pull+unpack from a registry on 127.0.0.1"
}
