// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/sendmsg4 and cgroup/sendmsg6: unconnected UDP to port 53 from an
 * enrolled pod goes to the DNS proxy on the pod's loopback (15053); the
 * resolver it was meant for is kept under the socket cookie so that
 * cgroup/recvmsg can make the answer appear to come from it. An unconnected
 * socket that queries several resolvers at once sees every answer from the
 * last one it sent to.
 */
#include "sockaddr.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/sendmsg4")
int ml_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct ml_pod *pod = bpf_map_lookup_elem(&ml_enrolled, &ns);
	if (!pod)
		return 1;
	struct ml_config cfg = ml_get_config();
	__u8 dst[16];
	__u16 port = bpf_ntohs(ctx->user_port);
	ml_v4mapped(dst, ctx->user_ip4);

	if (ml_decide(ctx, pod, &cfg, dst, port) != ML_CAPTURE_DNS)
		return 1;
	ml_remember(ctx, dst, port, ML_AF_INET);
	ctx->user_ip4 = bpf_htonl(ML_LOOPBACK4);
	ctx->user_port = bpf_htons(cfg.dns_port);
	return 1;
}

SEC("cgroup/sendmsg6")
int ml_sendmsg6(struct bpf_sock_addr *ctx)
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

	if (ml_decide(ctx, pod, &cfg, (const __u8 *)a, port) != ML_CAPTURE_DNS)
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
	ctx->user_port = bpf_htons(cfg.dns_port);
	return 1;
}
