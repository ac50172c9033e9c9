// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops: original-destination bookkeeping and per-workload TCP counters.
 *
 * At active-established, a socket captured by cgroup/connect has its original
 * destination copied from ml_sock_dst (socket cookie) to ml_origdst under
 * (netns cookie, client address), which the agent finds from the socket it
 * accepted on 15001: the same netns cookie (SO_NETNS_COOKIE) and the accepted
 * socket's remote address. The ml_origdst entry lives until the agent's end
 * (the passive socket on the outbound port) reaches TCP_CLOSE, so a client
 * that sends and closes before the agent looks still has one; the
 * ml_sock_dst entry goes when the client socket closes or is released.
 *
 * Counters, for sockets in enrolled pods not carrying the agent's mark (the
 * agent's own sockets in the pod's netns are not the workload's): connections
 * opened (either direction) and closed; at close, bytes and data segments each
 * way and the smoothed RTT into a histogram (one sample per connection);
 * retransmits as they happen.
 */
#include "meshlet.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* BPF_TCP_* states. */
#define ML_TCP_FIN_WAIT2 5
#define ML_TCP_CLOSE 7
#define ML_TCP_LAST_ACK 9
#define ML_TCP_CLOSING 11

static __always_inline struct ml_pod *ml_pod_of(struct bpf_sock_ops *skops)
{
	__u64 ns = bpf_get_netns_cookie(skops);
	struct ml_pod *pod = bpf_map_lookup_elem(&ml_enrolled, &ns);
	if (!pod)
		return 0;
	struct ml_config cfg = ml_get_config();
	struct bpf_sock *sk = skops->sk;
	if (sk && cfg.agent_mark && (sk->mark & cfg.agent_mark))
		return 0;
	return pod;
}

/*
 * ml_is_outbound_listener_side: a socket on the outbound port is the agent's
 * end of a captured connection (the mesh port is the agent's by definition;
 * no mark needed, which also covers MPTCP subflows).
 */
static __always_inline int ml_is_outbound_listener_side(struct bpf_sock_ops *skops)
{
	struct ml_config cfg = ml_get_config();
	return skops->local_port == cfg.outbound_port;
}

static __always_inline void ml_conn_key_of(struct bpf_sock_ops *skops, struct ml_conn_key *k)
{
	k->netns_cookie = bpf_get_netns_cookie(skops);
	if (skops->family == ML_AF_INET) {
		ml_v4mapped(k->ip, skops->local_ip4);
	} else {
		__u32 a[4];
		a[0] = *(volatile __u32 *)&skops->local_ip6[0];
		a[1] = *(volatile __u32 *)&skops->local_ip6[1];
		a[2] = *(volatile __u32 *)&skops->local_ip6[2];
		a[3] = *(volatile __u32 *)&skops->local_ip6[3];
		__builtin_memcpy(k->ip, a, 16);
	}
	k->port = (__u16)skops->local_port; /* host byte order already */
}

/* ml_peer_key_of is the key of the client an agent-side socket on the outbound port serves. */
static __always_inline void ml_peer_key_of(struct bpf_sock_ops *skops, struct ml_conn_key *k)
{
	k->netns_cookie = bpf_get_netns_cookie(skops);
	if (skops->family == ML_AF_INET) {
		ml_v4mapped(k->ip, skops->remote_ip4);
	} else {
		__u32 a[4];
		a[0] = *(volatile __u32 *)&skops->remote_ip6[0];
		a[1] = *(volatile __u32 *)&skops->remote_ip6[1];
		a[2] = *(volatile __u32 *)&skops->remote_ip6[2];
		a[3] = *(volatile __u32 *)&skops->remote_ip6[3];
		__builtin_memcpy(k->ip, a, 16);
	}
	k->port = (__u16)bpf_ntohl(skops->remote_port); /* network order in the upper half */
}

static __always_inline int ml_rtt_bucket(__u32 srtt_us)
{
	int i;
	__u32 bound = 64;
#pragma unroll
	for (i = 0; i < ML_RTT_BUCKETS - 1; i++) {
		if (srtt_us < bound)
			return i;
		bound <<= 1;
	}
	return ML_RTT_BUCKETS - 1;
}

SEC("sockops")
int ml_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != ML_AF_INET && skops->family != ML_AF_INET6)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && ml_is_outbound_listener_side(skops)) {
			/* The agent's end of a captured connection: watch it close. */
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
			return 1;
		}
		struct ml_pod *pod = ml_pod_of(skops);
		if (!pod)
			return 1;
		struct ml_stats *s = ml_stats_for(pod->workload_id);
		if (s)
			ML_INC(s->conns_opened);
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG);
		if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
			return 1;
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct ml_addr *orig = bpf_map_lookup_elem(&ml_sock_dst, &cookie);
		if (!orig)
			return 1;
		struct ml_conn_key k = {};
		ml_conn_key_of(skops, &k);
		bpf_map_update_elem(&ml_origdst, &k, orig, BPF_ANY);
		return 1;
	}
	case BPF_SOCK_OPS_RETRANS_CB: {
		struct ml_pod *pod = ml_pod_of(skops);
		if (!pod)
			return 1;
		struct ml_stats *s = ml_stats_for(pod->workload_id);
		if (s)
			ML_INC(s->retransmits);
		return 1;
	}
	case BPF_SOCK_OPS_STATE_CB: {
		if (skops->args[1] != ML_TCP_CLOSE)
			return 1;
		if (ml_is_outbound_listener_side(skops)) {
			struct ml_conn_key k = {};
			ml_peer_key_of(skops, &k);
			bpf_map_delete_elem(&ml_origdst, &k);
			return 1;
		}
		/*
		 * A closed TCP socket has no peer for getpeername: its ml_sock_dst
		 * entry goes too (cgroup/sock_release never sees kernel-internal
		 * sockets such as MPTCP subflows).
		 */
		__u64 cookie = bpf_get_socket_cookie(skops);
		bpf_map_delete_elem(&ml_sock_dst, &cookie);
		/* Only established sockets get here: the state callback is enabled then. */
		struct ml_pod *pod = ml_pod_of(skops);
		if (!pod)
			return 1;
		struct ml_stats *s = ml_stats_for(pod->workload_id);
		if (!s)
			return 1;
		/*
		 * bytes_acked and bytes_received count sequence space: take off
		 * the SYN, and the FINs of a connection that closed normally
		 * (the state before CLOSE says both FINs were exchanged and ours
		 * acknowledged). A connection reset after the peer's FIN counts
		 * one byte too many received; other resets are exact.
		 */
		__u64 sent = skops->bytes_acked, received = skops->bytes_received;
		__u32 old = skops->args[0];
		if (sent)
			sent--;
		if (old == ML_TCP_FIN_WAIT2 || old == ML_TCP_CLOSING || old == ML_TCP_LAST_ACK) {
			if (sent)
				sent--;
			if (received)
				received--;
		}
		ML_INC(s->conns_closed);
		ML_ADD(s->bytes_sent, sent);
		ML_ADD(s->bytes_received, received);
		ML_ADD(s->packets_sent, skops->data_segs_out);
		ML_ADD(s->packets_received, skops->data_segs_in);
		int b = ml_rtt_bucket(skops->srtt_us >> 3);
		if (b >= 0 && b < ML_RTT_BUCKETS)
			ML_INC(s->rtt_us_bucket[b]);
		return 1;
	}
	}
	return 1;
}
