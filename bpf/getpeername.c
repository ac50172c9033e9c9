// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/getpeername4 and cgroup/getpeername6: a captured socket's peer is the
 * address the app dialled, not the loopback listener it was rewritten to.
 */
#include "sockaddr.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline struct ml_addr *ml_captured(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct ml_addr *orig = bpf_map_lookup_elem(&ml_sock_dst, &cookie);
	if (!orig)
		return 0;
	struct ml_config cfg = ml_get_config();
	__u16 port = bpf_ntohs(ctx->user_port);
	if (port != cfg.outbound_port && port != cfg.dns_port)
		return 0;
	return orig;
}

SEC("cgroup/getpeername4")
int ml_getpeername4(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 != bpf_htonl(ML_LOOPBACK4))
		return 1;
	struct ml_addr *orig = ml_captured(ctx);
	if (!orig)
		return 1;
	__u32 ip4;
	__builtin_memcpy(&ip4, &orig->ip[12], 4);
	ctx->user_ip4 = ip4;
	ctx->user_port = bpf_htons(orig->port);
	return 1;
}

SEC("cgroup/getpeername6")
int ml_getpeername6(struct bpf_sock_addr *ctx)
{
	__u32 a[4];
	a[0] = *(volatile __u32 *)&ctx->user_ip6[0];
	a[1] = *(volatile __u32 *)&ctx->user_ip6[1];
	a[2] = *(volatile __u32 *)&ctx->user_ip6[2];
	a[3] = *(volatile __u32 *)&ctx->user_ip6[3];
	if (!ml_is_loopback((const __u8 *)a))
		return 1;
	struct ml_addr *orig = ml_captured(ctx);
	if (!orig)
		return 1;
	__u32 o[4];
	__builtin_memcpy(o, orig->ip, 16);
	ctx->user_ip6[0] = o[0];
	ctx->user_ip6[1] = o[1];
	ctx->user_ip6[2] = o[2];
	ctx->user_ip6[3] = o[3];
	ctx->user_port = bpf_htons(orig->port);
	return 1;
}
