// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* cgroup/sock_release: forget a released socket's original destination. */
#include "meshlet.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/sock_release")
int ml_sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	bpf_map_delete_elem(&ml_sock_dst, &cookie);
	return 1;
}
