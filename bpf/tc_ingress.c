// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc ingress (TCX, or clsact direct-action) on a pod's interface inside the
 * pod's netns: a TCP SYN to any local port but 15008 (HBONE), the inbound
 * listener's own port and ml_in_exclude ports, not carrying
 * ml_config.tc_skip_mark and not from an ml_in_skip_src address (kubelet's
 * probes), and not a kubelet probe (a port in ml_in_probe for the
 * destination, from an ml_probe_src address), is assigned to the listener on the inbound port (15006) for the
 * same destination address with bpf_skc_lookup_tcp +
 * bpf_sk_assign; the accepted socket keeps the original local address. If no
 * such listener exists the packet passes untouched. The program needs no
 * per-pod configuration: the listener is found in the netns the packet is in.
 */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include "meshlet.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline struct ml_tc_stats *ml_tc_counters(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ml_tc_counts, &zero);
}

SEC("tc")
int ml_tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple tuple = {};
	__u32 tuple_len;
	struct tcphdr *tcp;
	struct ml_ip src = {};
	struct ml_probe_key probe = {};

	if ((void *)(eth + 1) > end)
		return TC_ACT_UNSPEC;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != ML_IPPROTO_TCP || ip->ihl < 5)
			return TC_ACT_UNSPEC;
		if (ip->frag_off & bpf_htons(0x1fff)) /* not the first fragment */
			return TC_ACT_UNSPEC;
		tcp = (void *)ip + ip->ihl * 4;
		if ((void *)(tcp + 1) > end)
			return TC_ACT_UNSPEC;
		tuple.ipv4.saddr = ip->saddr;
		ml_v4mapped(src.ip, ip->saddr);
		ml_v4mapped(probe.ip, ip->daddr);
		tuple.ipv4.daddr = ip->daddr;
		tuple.ipv4.sport = tcp->source;
		tuple_len = sizeof(tuple.ipv4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != ML_IPPROTO_TCP)
			return TC_ACT_UNSPEC;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return TC_ACT_UNSPEC;
		__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(src.ip, &ip6->saddr, 16);
		__builtin_memcpy(probe.ip, &ip6->daddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
		tuple.ipv6.sport = tcp->source;
		tuple_len = sizeof(tuple.ipv6);
	} else {
		return TC_ACT_UNSPEC;
	}
	if (!tcp->syn || tcp->ack)
		return TC_ACT_UNSPEC;

	struct ml_tc_stats *st = ml_tc_counters();
	struct ml_config cfg = ml_get_config();
	__u16 dport = bpf_ntohs(tcp->dest);
	if (dport == ML_PORT_HBONE || dport == cfg.inbound_port || bpf_map_lookup_elem(&ml_in_exclude, &dport)) {
		if (st)
			ML_INC(st->passed_excluded_port);
		return TC_ACT_UNSPEC;
	}
	if (cfg.tc_skip_mark && (skb->mark & cfg.tc_skip_mark)) {
		if (st)
			ML_INC(st->passed_mark);
		return TC_ACT_UNSPEC;
	}

	if (bpf_map_lookup_elem(&ml_in_skip_src, &src)) {
		if (st)
			ML_INC(st->passed_source);
		return TC_ACT_UNSPEC;
	}
	probe.port = dport;
	if (bpf_map_lookup_elem(&ml_probe_src, &src) && bpf_map_lookup_elem(&ml_in_probe, &probe)) {
		if (st)
			ML_INC(st->passed_probe);
		return TC_ACT_UNSPEC;
	}

	if (tuple_len == sizeof(tuple.ipv4))
		tuple.ipv4.dport = bpf_htons(cfg.inbound_port);
	else
		tuple.ipv6.dport = bpf_htons(cfg.inbound_port);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		if (st)
			ML_INC(st->passed_no_listener);
		return TC_ACT_UNSPEC;
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		if (st)
			ML_INC(st->passed_no_listener);
		return TC_ACT_UNSPEC;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		if (st)
			ML_INC(st->assign_failed);
		return TC_ACT_UNSPEC;
	}
	if (st)
		ML_INC(st->steered);
	return TC_ACT_OK;
}
