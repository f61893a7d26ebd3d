package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics serves `mount --metrics`: the node's and its peers' replication
// state, read at each scrape (the same figures as `mailfs status`), the
// syncer's cumulative counters, and FUSE request latency histograms.
type metrics struct {
	reg     *prometheus.Registry
	latency *prometheus.HistogramVec
	st      *openedStore
	log     *slog.Logger
	srv     *http.Server
}

func newMetrics(st *openedStore, log *slog.Logger) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), st: st, log: log,
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mailfs_fuse_request_duration_seconds",
			Help: "Time to answer a FUSE request, by operation.",
			// 20 µs to ~10 s: a cached lookup to a delivery waiting on a slow disk.
			Buckets: prometheus.ExponentialBuckets(20e-6, 2.5, 15),
		}, []string{"op"}),
	}
	m.reg.MustRegister(m.latency, m, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe records one FUSE request (fs.Options.ObserveRequest).
func (m *metrics) observe(op string, d time.Duration) {
	m.latency.WithLabelValues(op).Observe(d.Seconds())
}

var (
	peerLabels    = []string{"peer", "peer_id"}
	descSeq       = prometheus.NewDesc("mailfs_journal_seq", "The last seq this node journaled.", nil, nil)
	descMailboxes = prometheus.NewDesc("mailfs_mailboxes", "Mailboxes this node holds.", nil, nil)
	descMessages  = prometheus.NewDesc("mailfs_messages", "Messages this node holds.", nil, nil)
	descConnected = prometheus.NewDesc("mailfs_peer_connected", "1 while this node's push connection to the peer is up.", peerLabels, nil)
	descInbound   = prometheus.NewDesc("mailfs_peer_inbound_connected", "1 while the peer's push connection to this node is up.", peerLabels, nil)
	descAcked     = prometheus.NewDesc("mailfs_peer_acked_seq", "The last of this node's ops the peer made durable.", peerLabels, nil)
	descLagOps    = prometheus.NewDesc("mailfs_peer_lag_ops", "This node's ops the peer has not acknowledged.", peerLabels, nil)
	descLagBytes  = prometheus.NewDesc("mailfs_peer_lag_bytes", "Bytes of the messages and files those ops add.", peerLabels, nil)
	descLagSecs   = prometheus.NewDesc("mailfs_peer_lag_seconds", "Age of the oldest op the peer has not acknowledged (0: none).", peerLabels, nil)
	descSent      = prometheus.NewDesc("mailfs_peer_sent_bytes_total", "Replication bytes sent to the peer.", peerLabels, nil)
	descReceived  = prometheus.NewDesc("mailfs_peer_received_bytes_total", "Replication bytes received from the peer.", peerLabels, nil)
	descOpsSent   = prometheus.NewDesc("mailfs_peer_sent_ops_total", "Ops pushed to the peer.", peerLabels, nil)
	descOpsApply  = prometheus.NewDesc("mailfs_peer_applied_ops_total", "Ops of the peer applied here.", peerLabels, nil)
	descRefusedP  = prometheus.NewDesc("mailfs_peer_refused_segments_total", "Segments of the peer refused here.", peerLabels, nil)
	descFastSync  = prometheus.NewDesc("mailfs_peer_last_fast_sync_timestamp_seconds",
		"When the peer last acknowledged every op journaled at that moment (unix time; absent: not since start).", peerLabels, nil)
	descFullSync = prometheus.NewDesc("mailfs_peer_last_full_sync_timestamp_seconds",
		"When this node's last full sync with the peer ended (unix time; absent: never).", peerLabels, nil)
	descFullOK = prometheus.NewDesc("mailfs_peer_last_full_sync_ok",
		"1 if this node's last full sync with the peer went through, 0 if it failed (absent: never ran).", peerLabels, nil)
	descSkew = prometheus.NewDesc("mailfs_peer_clock_skew_seconds",
		"The peer's wall clock minus this node's, last measured (absent: not measured since start).", peerLabels, nil)
	descApplied   = prometheus.NewDesc("mailfs_applied_ops_total", "Peer ops applied here, by kind.", []string{"kind"}, nil)
	descRefused   = prometheus.NewDesc("mailfs_refused_segments_total", "Peer data refused here, by reason.", []string{"reason"}, nil)
	descConflicts = prometheus.NewDesc("mailfs_conflicts_resolved_total", "Conflicts resolved while merging, by rule of the design.", []string{"rule"}, nil)
)

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSeq, descMailboxes, descMessages, descConnected, descInbound, descAcked,
		descLagOps, descLagBytes, descLagSecs, descSent, descReceived, descOpsSent, descOpsApply, descRefusedP,
		descFastSync, descFullSync, descFullOK, descSkew, descApplied, descRefused, descConflicts} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	rep, err := buildStatus(m.st, "")
	if err != nil {
		m.log.Warn("metrics: reading the node's status failed", "err", err)
		ch <- prometheus.NewInvalidMetric(descSeq, err)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descSeq, float64(rep.Node.JournalSeq))
	gauge(descMailboxes, float64(rep.Node.Mailboxes))
	gauge(descMessages, float64(rep.Node.Messages))
	for _, p := range rep.Peers {
		l := []string{p.Name, p.ID}
		gauge(descConnected, b2f(p.Connected), l...)
		gauge(descInbound, b2f(p.Inbound), l...)
		gauge(descAcked, float64(p.AckedSeq), l...)
		gauge(descLagOps, float64(p.LagOps), l...)
		gauge(descLagBytes, float64(p.LagBytes), l...)
		gauge(descLagSecs, p.LagSeconds, l...)
		counter(descSent, float64(p.BytesSent), l...)
		counter(descReceived, float64(p.BytesReceived), l...)
		counter(descOpsSent, float64(p.OpsSent), l...)
		counter(descOpsApply, float64(p.OpsApplied), l...)
		counter(descRefusedP, float64(p.SegmentsRefused), l...)
		if t, ok := parseTime(p.LastFastSync); ok {
			gauge(descFastSync, unixSeconds(t), l...)
		}
		if t, ok := parseTime(p.LastFullSync); ok {
			gauge(descFullSync, unixSeconds(t), l...)
			gauge(descFullOK, b2f(p.LastFullSyncOK), l...)
		}
		if p.ClockSkewMs != nil {
			gauge(descSkew, float64(*p.ClockSkewMs)/1000, l...)
		}
	}
	if m.st.sync == nil {
		return
	}
	c := m.st.sync.Counters()
	for k, v := range c.Applied {
		counter(descApplied, float64(v), k)
	}
	for k, v := range c.Refused {
		counter(descRefused, float64(v), k)
	}
	for k, v := range c.Conflicts {
		counter(descConflicts, float64(v), k)
	}
}

// parseTime reads a status timestamp (nil: none).
func parseTime(ts *string) (time.Time, bool) {
	if ts == nil {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, *ts)
	return t, err == nil
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serve starts the HTTP listener for /metrics at addr.
func (m *metrics) serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelWarn)}))
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("metrics server stopped", "addr", addr, "err", err)
		}
	}()
	m.log.Info("serving Prometheus metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return nil
}

func (m *metrics) Close() {
	if m.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		m.srv.Shutdown(ctx)
	}
}
