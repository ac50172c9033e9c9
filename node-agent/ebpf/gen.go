package ebpf

// Every eBPF object is built here from ../../bpf (one C file per attach point)
// with Debian's clang 14; `make generate` reruns these and CI fails on a diff.
// The structs that cross into Go are generated once, from the sockops object
// (every object carries every map, so every object's BTF has them).

//go:generate go tool bpf2go -tags linux -cc clang-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -type ml_pod -type ml_addr -type ml_conn_key -type ml_config -type ml_stats -type ml_tc_stats -type ml_exclude_key -type ml_ip -type ml_probe_key sockops ../../bpf/sockops.c
//go:generate go tool bpf2go -tags linux -cc clang-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" connect ../../bpf/connect.c
//go:generate go tool bpf2go -tags linux -cc clang-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" sendmsg ../../bpf/sendmsg.c
//go:generate go tool bpf2go -tags linux -cc clang-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" recvmsg ../../bpf/recvmsg.c
//go:generate go tool bpf2go -tags linux -cc clang-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" getpeername ../../bpf/getpeername.c
//go:generate go tool bpf2go -tags linux -cc clang-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" sockRelease ../../bpf/sock_release.c
//go:generate go tool bpf2go -tags linux -cc clang-14 -target bpfel -cflags "-O2 -g -Wall -Werror -I../../bpf/include -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" tcIngress ../../bpf/tc_ingress.c
