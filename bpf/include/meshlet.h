/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Shared definitions for meshlet's eBPF programs: the structs that cross into
 * Go (generated with bpf2go -type) and the maps every object shares. Every map
 * is pinned by name, so the objects built from the separate C files share one
 * instance of each map through the loader's pin directory, and a restarted
 * agent adopts them.
 */
#ifndef MESHLET_H
#define MESHLET_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ML_PORT_OUTBOUND 15001
#define ML_PORT_INBOUND 15006
#define ML_PORT_HBONE 15008
#define ML_PORT_METRICS 15020
#define ML_PORT_HEALTH 15021
#define ML_PORT_DNS 15053
#define ML_PORT_ADMIN 15000

#define ML_AF_INET 2
#define ML_AF_INET6 10
#define ML_IPPROTO_TCP 6
#define ML_IPPROTO_UDP 17
#define ML_IPPROTO_MPTCP 262
#define ML_SOCK_STREAM 1
#define ML_SOCK_DGRAM 2

#define ML_RTT_BUCKETS 12

/*
 * Counters are per CPU, but a softirq (sockops, tc) can interrupt a program
 * in process context (connect) on the same CPU: add atomically.
 */
#define ML_ADD(field, v) __sync_fetch_and_add(&(field), (v))
#define ML_INC(field) ML_ADD(field, 1)

/* Pod flags (ml_pod.flags). */
#define ML_POD_NO_CAPTURE_TCP 0x1 /* enrolled, but leave outbound TCP alone */
#define ML_POD_NO_CAPTURE_DNS 0x2 /* enrolled, but leave UDP/53 alone */

/* An enrolled pod, keyed by its netns cookie in ml_enrolled. */
struct ml_pod {
	__u32 workload_id; /* the agent's id for (namespace, workload, service account) */
	__u32 flags;       /* ML_POD_* */
	__u8 ip4[4];       /* the pod's IPv4 address, for reconciling reused IPs */
	__u8 ip6[16];      /* the pod's IPv6 address, zero when it has none */
};

/* An address: IPv4 as ::ffff:a.b.c.d, port in host byte order. */
struct ml_addr {
	__u8 ip[16];
	__u16 port;
	__u16 family; /* ML_AF_INET or ML_AF_INET6: the family the app dialled */
};

/*
 * ml_origdst key: the connecting socket's netns cookie and its local address,
 * which the agent sees as the remote address of the socket it accepted on
 * 15001 (and reads the netns cookie of with SO_NETNS_COOKIE).
 */
struct ml_conn_key {
	__u64 netns_cookie;
	__u8 ip[16];
	__u16 port;
	__u16 pad1;
	__u32 pad2;
};

/* Global runtime configuration, entry 0 of ml_config. */
struct ml_config {
	__u32 agent_mark;      /* sockets with (mark & agent_mark) != 0 are never captured; 0: none */
	__u32 outbound_port;   /* redirect target port for TCP, default 15001 when 0 */
	__u32 dns_port;        /* redirect target port for UDP/53, default 15053 when 0 */
	__u32 inbound_port;    /* tc: listener port for inbound plaintext, default 15006 when 0 */
	__u32 tc_skip_mark;    /* tc: packets with (mark & tc_skip_mark) != 0 pass; 0: none */
	__u32 pad;
};

/* Per-workload counters (per CPU), keyed by workload id in ml_stats. */
struct ml_stats {
	__u64 conns_opened;
	__u64 conns_closed;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 packets_sent;
	__u64 packets_received;
	__u64 retransmits;
	__u64 rtt_us_bucket[ML_RTT_BUCKETS]; /* bucket i: srtt < 2^(i+6) us (64us..), last: the rest */
	__u64 captured_tcp;
	__u64 captured_dns;
	__u64 bypassed_mark;
	__u64 bypassed_mesh_port;
	__u64 bypassed_excluded;
	__u64 bypassed_flags;
};

/* Inbound tc counters (per CPU), entry 0 of ml_tc_stats. */
struct ml_tc_stats {
	__u64 steered;
	__u64 passed_excluded_port;
	__u64 passed_mark;
	__u64 passed_source;
	__u64 passed_no_listener;
	__u64 assign_failed;
	__u64 passed_probe;
};

/* An address, IPv4 as ::ffff:a.b.c.d. */
struct ml_ip {
	__u8 ip[16];
};

/* Excluded outbound destinations: (port) or (ip, port) with port 0 as "any port". */
struct ml_exclude_key {
	__u8 ip[16]; /* all zero: any address */
	__u16 port;  /* 0: any port */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ml_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_enrolled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ml_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_cfg SEC(".maps");

/* Original destination by socket cookie, from connect until established (TCP) or release (UDP). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ml_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_sock_dst SEC(".maps");

/* Original destination by (netns cookie, client address), from established until close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ml_conn_key);
	__type(value, struct ml_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_origdst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ml_exclude_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_exclude SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct ml_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_workload_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ml_tc_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_tc_counts SEC(".maps");

/* Inbound sources (IPv4 as ::ffff:a.b.c.d) the tc program never steers, such as kubelet's probe address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct ml_ip);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_in_skip_src SEC(".maps");

/* A port kubelet probes on an enrolled pod's address (IPv4 as ::ffff:a.b.c.d,
 * port in host byte order). A SYN to it from an ml_probe_src address (the
 * node's) is not steered: the probe reaches the app directly, as the agent
 * would have let it through (STRICT exempts probes) at the cost of a hop.
 */
struct ml_probe_key {
	__u8 ip[16];
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ml_probe_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_in_probe SEC(".maps");

/* The node's addresses, which kubelet's probes come from. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct ml_ip);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_probe_src SEC(".maps");

/* Inbound ports (host byte order) the tc program never steers, besides 15008. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ml_in_exclude SEC(".maps");

static __always_inline struct ml_config ml_get_config(void)
{
	__u32 zero = 0;
	struct ml_config c = {};
	struct ml_config *p = bpf_map_lookup_elem(&ml_cfg, &zero);
	if (p)
		c = *p;
	if (!c.outbound_port)
		c.outbound_port = ML_PORT_OUTBOUND;
	if (!c.dns_port)
		c.dns_port = ML_PORT_DNS;
	if (!c.inbound_port)
		c.inbound_port = ML_PORT_INBOUND;
	return c;
}

static __always_inline int ml_is_mesh_port(__u16 port)
{
	switch (port) {
	case ML_PORT_OUTBOUND:
	case ML_PORT_INBOUND:
	case ML_PORT_HBONE:
	case ML_PORT_METRICS:
	case ML_PORT_HEALTH:
	case ML_PORT_DNS:
	case ML_PORT_ADMIN:
		return 1;
	}
	return 0;
}

/* ml_stats_for returns the calling CPU's counters of a workload, creating them. */
static __always_inline struct ml_stats *ml_stats_for(__u32 workload)
{
	struct ml_stats *s = bpf_map_lookup_elem(&ml_workload_stats, &workload);
	if (s)
		return s;
	struct ml_stats zero = {};
	bpf_map_update_elem(&ml_workload_stats, &workload, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&ml_workload_stats, &workload);
}

static __always_inline void ml_v4mapped(__u8 ip[16], __u32 be_addr)
{
	__builtin_memset(ip, 0, 10);
	ip[10] = 0xff;
	ip[11] = 0xff;
	__builtin_memcpy(&ip[12], &be_addr, 4);
}

static __always_inline int ml_is_v4mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

#endif /* MESHLET_H */
