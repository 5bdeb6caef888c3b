// Package windows stands in for golang.org/x/sys/windows, which Debian's
// golang-golang-x-sys-dev does not ship. golang.org/x/net needs only these socket
// constants from it on Windows; they come from the standard syscall package, or are the
// documented Winsock values where syscall lacks them.
package windows

import "syscall"

const (
	AF_UNSPEC = syscall.AF_UNSPEC
	AF_INET   = syscall.AF_INET
	AF_INET6  = syscall.AF_INET6
	SOCK_RAW  = syscall.SOCK_RAW

	IP_HDRINCL         = 0x2
	IP_TOS             = syscall.IP_TOS
	IP_TTL             = syscall.IP_TTL
	IP_MULTICAST_IF    = syscall.IP_MULTICAST_IF
	IP_MULTICAST_TTL   = syscall.IP_MULTICAST_TTL
	IP_MULTICAST_LOOP  = syscall.IP_MULTICAST_LOOP
	IP_ADD_MEMBERSHIP  = syscall.IP_ADD_MEMBERSHIP
	IP_DROP_MEMBERSHIP = syscall.IP_DROP_MEMBERSHIP

	IPV6_UNICAST_HOPS   = syscall.IPV6_UNICAST_HOPS
	IPV6_MULTICAST_IF   = syscall.IPV6_MULTICAST_IF
	IPV6_MULTICAST_HOPS = syscall.IPV6_MULTICAST_HOPS
	IPV6_MULTICAST_LOOP = syscall.IPV6_MULTICAST_LOOP
	IPV6_JOIN_GROUP     = syscall.IPV6_JOIN_GROUP
	IPV6_LEAVE_GROUP    = syscall.IPV6_LEAVE_GROUP
)
