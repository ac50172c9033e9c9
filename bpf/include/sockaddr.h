/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Helpers shared by the cgroup/sock_addr programs (connect, sendmsg, recvmsg, getpeername). */
#ifndef MESHLET_SOCKADDR_H
#define MESHLET_SOCKADDR_H

#include "meshlet.h"

#define ML_LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

enum ml_verdict {
	ML_CAPTURE_TCP = 1,
	ML_CAPTURE_DNS,
	ML_BYPASS_MARK,
	ML_BYPASS_MESH_PORT,
	ML_BYPASS_EXCLUDED,
	ML_BYPASS_FLAGS,
	ML_IGNORE, /* not ours to count: not TCP, not UDP/53 */
};

static __always_inline int ml_excluded(const __u8 ip[16], __u16 port)
{
	struct ml_exclude_key k = {};
	k.port = port;
	if (bpf_map_lookup_elem(&ml_exclude, &k))
		return 1;
	__builtin_memcpy(k.ip, ip, 16);
	if (bpf_map_lookup_elem(&ml_exclude, &k))
		return 1;
	k.port = 0;
	if (bpf_map_lookup_elem(&ml_exclude, &k))
		return 1;
	return 0;
}

static __always_inline int ml_is_loopback(const __u8 ip[16])
{
	const __u32 *a = (const __u32 *)ip;
	if (ml_is_v4mapped(a))
		return ip[12] == 127;
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

/*
 * ml_decide says what to do with a connect/sendmsg from a socket in an enrolled
 * pod towards dst (port in host order), counting the decision.
 */
static __always_inline enum ml_verdict ml_decide(struct bpf_sock_addr *ctx, const struct ml_pod *pod,
						 const struct ml_config *cfg, const __u8 dst[16], __u16 port)
{
	enum ml_verdict v;
	struct bpf_sock *sk = ctx->sk;
	/* MPTCP must not bypass the mesh: the kernel runs this hook on its TCP
	 * subflow, and the protocol check covers the MPTCP socket itself too. */
	int tcp = ctx->type == ML_SOCK_STREAM && (ctx->protocol == ML_IPPROTO_TCP || ctx->protocol == ML_IPPROTO_MPTCP);
	int dns = ctx->type == ML_SOCK_DGRAM && ctx->protocol == ML_IPPROTO_UDP && port == 53;

	if (!tcp && !dns)
		return ML_IGNORE;
	if (sk && cfg->agent_mark && (sk->mark & cfg->agent_mark))
		v = ML_BYPASS_MARK;
	else if ((tcp && (pod->flags & ML_POD_NO_CAPTURE_TCP)) || (dns && (pod->flags & ML_POD_NO_CAPTURE_DNS)))
		v = ML_BYPASS_FLAGS;
	else if (ml_is_mesh_port(port))
		v = ML_BYPASS_MESH_PORT;
	else if (ml_is_loopback(dst) || ml_excluded(dst, port))
		v = ML_BYPASS_EXCLUDED;
	else
		v = tcp ? ML_CAPTURE_TCP : ML_CAPTURE_DNS;

	struct ml_stats *s = ml_stats_for(pod->workload_id);
	if (s) {
		switch (v) {
		case ML_CAPTURE_TCP: ML_INC(s->captured_tcp); break;
		case ML_CAPTURE_DNS: ML_INC(s->captured_dns); break;
		case ML_BYPASS_MARK: ML_INC(s->bypassed_mark); break;
		case ML_BYPASS_MESH_PORT: ML_INC(s->bypassed_mesh_port); break;
		case ML_BYPASS_EXCLUDED: ML_INC(s->bypassed_excluded); break;
		case ML_BYPASS_FLAGS: ML_INC(s->bypassed_flags); break;
		default: break;
		}
	}
	return v;
}

/* ml_remember keeps the original destination of a captured socket for the agent and getpeername/recvmsg. */
static __always_inline void ml_remember(struct bpf_sock_addr *ctx, const __u8 dst[16], __u16 port, __u16 family)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct ml_addr a = {};
	__builtin_memcpy(a.ip, dst, 16);
	a.port = port;
	a.family = family;
	bpf_map_update_elem(&ml_sock_dst, &cookie, &a, BPF_ANY);
}

#endif /* MESHLET_SOCKADDR_H */
