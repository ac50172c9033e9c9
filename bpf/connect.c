// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4 and cgroup/connect6: outbound capture. A TCP connect from a
 * socket in an enrolled pod's netns (not carrying the agent's mark, not to a
 * mesh port, loopback or an excluded destination) is rewritten to the pod's own
 * loopback outbound listener (127.0.0.1:15001, or ::ffff:127.0.0.1 / ::1 for
 * IPv6 sockets), a UDP connect to port 53 to the DNS proxy on 15053; the
 * original destination is kept in ml_sock_dst under the socket cookie.
 */
#include "sockaddr.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/connect4")
int ml_connect4(struct bpf_sock_addr *ctx)
{
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct ml_pod *pod = bpf_map_lookup_elem(&ml_enrolled, &ns);
	if (!pod)
		return 1;
	struct ml_config cfg = ml_get_config();
	__u8 dst[16];
	__u16 port = bpf_ntohs(ctx->user_port);
	ml_v4mapped(dst, ctx->user_ip4);

	enum ml_verdict v = ml_decide(ctx, pod, &cfg, dst, port);
	if (v != ML_CAPTURE_TCP && v != ML_CAPTURE_DNS)
		return 1;
	ml_remember(ctx, dst, port, ML_AF_INET);
	ctx->user_ip4 = bpf_htonl(ML_LOOPBACK4);
	ctx->user_port = bpf_htons(v == ML_CAPTURE_TCP ? cfg.outbound_port : cfg.dns_port);
	return 1;
}

SEC("cgroup/connect6")
int ml_connect6(struct bpf_sock_addr *ctx)
{
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct ml_pod *pod = bpf_map_lookup_elem(&ml_enrolled, &ns);
	if (!pod)
		return 1;
	struct ml_config cfg = ml_get_config();
	__u32 a[4];
	__u16 port = bpf_ntohs(ctx->user_port);
	a[0] = *(volatile __u32 *)&ctx->user_ip6[0];
	a[1] = *(volatile __u32 *)&ctx->user_ip6[1];
	a[2] = *(volatile __u32 *)&ctx->user_ip6[2];
	a[3] = *(volatile __u32 *)&ctx->user_ip6[3];
	int mapped = ml_is_v4mapped(a);

	enum ml_verdict v = ml_decide(ctx, pod, &cfg, (const __u8 *)a, port);
	if (v != ML_CAPTURE_TCP && v != ML_CAPTURE_DNS)
		return 1;
	ml_remember(ctx, (const __u8 *)a, port, mapped ? ML_AF_INET : ML_AF_INET6);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	if (mapped) {
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(ML_LOOPBACK4);
	} else {
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(v == ML_CAPTURE_TCP ? cfg.outbound_port : cfg.dns_port);
	return 1;
}
