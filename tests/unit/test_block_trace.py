"""bench.block_trace's summary of a tracefs block trace (the recording needs root and a
capped server; these lines are in the kernel's own format, taken from a real trace)."""
from diskllm.bench.block_trace import report, summarize

TRACE = """\
 kworker/1:2H-1638 [001] ..... 100.000000: block_rq_issue: 254,0 RA 1048576 () 1000 + 2048 be,0,4 [kworker/1:2H]
 kworker/1:2H-1638 [001] ..... 100.000100: block_rq_issue: 254,0 RA 524288 () 5000 + 1024 be,0,4 [kworker/1:2H]
 kworker/1:2H-1638 [001] ..... 100.000200: block_rq_issue: 254,0 RA 524288 () 5000 + 1024 be,0,4 [kworker/1:2H]
 <idle>-0 [001] .Ns1. 100.001000: block_rq_complete: 254,0 RA () 1000 + 2048 be,0,4 [0]
 <idle>-0 [001] .Ns1. 100.002000: block_rq_complete: 254,0 RA () 5000 + 1024 be,0,4 [0]
 kworker/0:1H-99 [000] ..... 100.003000: block_rq_issue: 254,0 WS 4096 () 9000 + 8 be,0,4 [kworker/0:1H]
 ls-server-7 [000] ..... 100.012000: block_rq_issue: 254,0 R 4096 () 7000 + 8 be,0,4 [ls-server]
 <idle>-0 [000] .Ns1. 100.013000: block_rq_complete: 254,0 R () 7000 + 8 be,0,4 [0]
 <idle>-0 [000] .Ns1. 100.013000: block_rq_complete: 254,0 WS () 9000 + 8 be,0,4 [0]
 kworker/1:2H-1638 [001] ..... 100.013500: block_rq_issue: 8,16 RA 1048576 () 1000 + 2048 be,0,4 [kworker/1:2H]
"""


def test_reads_busy_time_reissues_and_gaps():
    s = summarize(TRACE.splitlines(), {(254, 0)}, gap_seconds=0.005)
    assert s.reads == 3 and s.reissues == 1           # the write and the other device are left out
    assert s.bytes == (2048 + 1024 + 8) * 512
    assert abs(s.seconds - 0.013) < 1e-9
    assert abs(s.busy_seconds - 0.003) < 1e-9         # 0-2 ms and 12-13 ms
    assert [round(g, 6) for g in s.gaps] == [0.01]    # 2-12 ms with nothing in flight
    # two in flight from 0.1 to 1 ms: (0.1 + 2 x 0.9 + 1 + 1) / 3 ms
    assert abs(s.in_flight_mean - (0.0001 + 2 * 0.0009 + 0.001 + 0.001) / 0.003) < 1e-6
    assert s.bytes_by_size == {"<= 1024 KiB": 2048 * 512, "<= 512 KiB": 1024 * 512, "<= 4 KiB": 8 * 512}
    text = report(s, 5)
    assert "3 reads" in text and "re-issued 1 times" in text and "the largest 10.0 ms" in text


def test_a_trace_without_reads_says_so():
    s = summarize(["nothing here", TRACE.splitlines()[5]], None)
    assert s.reads == 0 and report(s, 5) == "no reads completed in the window"
