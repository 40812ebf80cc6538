// torus-netdelay: adds a fixed one-way latency to a host's outgoing packets, for the simulated
// cluster (launch/cluster) on kernels without the netem qdisc. An iptables rule sends the
// host's packets to netfilter queue QUEUE; this program holds each one for DELAY_US
// microseconds and then lets it go, in arrival order (one batch verdict per wake-up).
//
//   torus-netdelay QUEUE DELAY_US [--detach]   (inside the host's network namespace, as root;
//                                             without --detach it ends with its parent)
//
// It speaks nfnetlink_queue directly (no libnetfilter_queue); packets are queued with metadata
// only (no payload copy). If the queue overflows, the kernel lets packets pass undelayed
// (fail-open) rather than dropping them.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING 262144

static uint32_t ids[RING];
static uint64_t due[RING];
static size_t head, tail;
static int fd;
static uint16_t queue;
static uint32_t seq;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "torus-netdelay (queue %u): %s: %s\n", queue, what, strerror(errno));
    exit(1);
}

// Appends one attribute to the message in buf (length in *len).
static void put_attr(char *buf, size_t *len, uint16_t type, const void *data, uint16_t size) {
    struct nlattr *a = (struct nlattr *)(buf + *len);
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + size);
    memcpy((char *)a + NLA_HDRLEN, data, size);
    *len += NLA_ALIGN(a->nla_len);
}

// Starts a queue message of the given type in buf; returns its length so far.
static size_t begin(char *buf, uint16_t type, uint16_t flags) {
    memset(buf, 0, NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    h->nlmsg_type = (uint16_t)((NFNL_SUBSYS_QUEUE << 8) | type);
    h->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags);
    h->nlmsg_seq = ++seq;
    struct nfgenmsg *g = (struct nfgenmsg *)(buf + NLMSG_HDRLEN);
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(queue);
    return NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
}

static void send_msg(char *buf, size_t len) {
    ((struct nlmsghdr *)buf)->nlmsg_len = (uint32_t)len;
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    if (sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to) < 0) die("sendto");
}

// Sends a configuration message and waits for the kernel's acknowledgement of it (packet
// notifications that arrive first are skipped; those packets go with the first batch verdict).
static void configure(char *buf, size_t len, const char *what) {
    send_msg(buf, len);
    uint32_t want = ((struct nlmsghdr *)buf)->nlmsg_seq;
    static char reply[1 << 16];
    for (;;) {
        ssize_t n = recv(fd, reply, sizeof reply, 0);
        if (n < 0) die(what);
        for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_seq != want) continue;
            struct nlmsgerr *e = NLMSG_DATA(h);
            if (e->error != 0) { errno = -e->error; die(what); }
            return;
        }
    }
}

// Lets every held packet whose time has come go (ids are handed out in increasing order).
static void release(uint64_t now) {
    if (head == tail || due[head % RING] > now) return;
    uint32_t last = 0;
    while (head != tail && due[head % RING] <= now) last = ids[head++ % RING];
    char buf[256];
    size_t len = begin(buf, NFQNL_MSG_VERDICT_BATCH, 0);
    struct nfqnl_msg_verdict_hdr v = {.verdict = htonl(NF_ACCEPT), .id = htonl(last)};
    put_attr(buf, &len, NFQA_VERDICT_HDR, &v, sizeof v);
    send_msg(buf, len);
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "--detach") != 0)) {
        fprintf(stderr, "usage: torus-netdelay QUEUE DELAY_US [--detach]\n");
        return 2;
    }
    int detach = argc == 4;
    queue = (uint16_t)atoi(argv[1]);
    uint64_t delay = (uint64_t)(atof(argv[2]) * 1000.0);
    prctl(PR_SET_TIMERSLACK, 1UL);
    // End with the script that started us, and obey SIGTERM even if our parent ignored or
    // blocked it (both are inherited across exec).
    if (!detach) prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
    if (fd < 0) die("netlink socket");
    int size = 64 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    struct sockaddr_nl self = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&self, sizeof self) < 0) die("bind");

    char buf[256];
    size_t len = begin(buf, NFQNL_MSG_CONFIG, NLM_F_ACK);
    struct nfqnl_msg_config_cmd cmd = {.command = NFQNL_CFG_CMD_BIND, .pf = htons(AF_INET)};
    put_attr(buf, &len, NFQA_CFG_CMD, &cmd, sizeof cmd);
    configure(buf, len, "binding the queue (is another program bound to it?)");
    len = begin(buf, NFQNL_MSG_CONFIG, NLM_F_ACK);
    struct nfqnl_msg_config_params params = {.copy_range = htonl(0), .copy_mode = NFQNL_COPY_META};
    put_attr(buf, &len, NFQA_CFG_PARAMS, &params, sizeof params);
    uint32_t maxlen = htonl(RING / 2);
    put_attr(buf, &len, NFQA_CFG_QUEUE_MAXLEN, &maxlen, sizeof maxlen);
    // GSO: take large (not yet segmented) packets whole; we never look at payloads.
    uint32_t flags = htonl(NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO);
    put_attr(buf, &len, NFQA_CFG_FLAGS, &flags, sizeof flags);
    put_attr(buf, &len, NFQA_CFG_MASK, &flags, sizeof flags);
    configure(buf, len, "setting queue parameters");
    fprintf(stderr, "torus-netdelay: queue %u, delay %.0f us\n", queue, delay / 1000.0);

    static char rx[1 << 20];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    for (;;) {
        uint64_t now = now_ns();
        release(now);
        struct timespec wait, *timeout = NULL;
        if (head != tail) {
            uint64_t left = due[head % RING] > now ? due[head % RING] - now : 0;
            wait.tv_sec = (time_t)(left / 1000000000ull);
            wait.tv_nsec = (long)(left % 1000000000ull);
            timeout = &wait;
        }
        int r = ppoll(&p, 1, timeout, NULL);
        if (r < 0 && errno != EINTR) die("ppoll");
        if (r <= 0) continue;
        ssize_t n = recv(fd, rx, sizeof rx, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            if (errno == ENOBUFS) { fprintf(stderr, "torus-netdelay: netlink overrun; some packets were not delayed\n"); continue; }
            die("recv");
        }
        uint64_t arrived = now_ns();
        for (struct nlmsghdr *h = (struct nlmsghdr *)rx; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if ((h->nlmsg_type & 0xff) != NFQNL_MSG_PACKET || (h->nlmsg_type >> 8) != NFNL_SUBSYS_QUEUE) continue;
            char *attrs = (char *)NLMSG_DATA(h) + NLMSG_ALIGN(sizeof(struct nfgenmsg));
            int left = (int)h->nlmsg_len - (int)(attrs - (char *)h);
            for (struct nlattr *a = (struct nlattr *)attrs; left >= NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && a->nla_len <= left;
                 left -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len))) {
                if ((a->nla_type & NLA_TYPE_MASK) != NFQA_PACKET_HDR) continue;
                struct nfqnl_msg_packet_hdr *ph = (struct nfqnl_msg_packet_hdr *)((char *)a + NLA_HDRLEN);
                if (tail - head == RING) release(UINT64_MAX);
                ids[tail % RING] = ntohl(ph->packet_id);
                due[tail % RING] = arrived + delay;
                tail++;
                break;
            }
        }
    }
}
