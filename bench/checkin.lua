-- wrk script of bench/fleet.sh: replays pre-signed "nothing new" check-ins.
--
--   wrk -t THREADS ... -s bench/checkin.lua URL -- REQUESTS_FILE THREADS [SKIP]
--
-- REQUESTS_FILE is written by `bench_fleet sign`: the date, the JSON body, the number of
-- machines N, then "MACHINE-ID COUNTER SIGNATURE" lines, N per round. Thread t of T takes the
-- machines i with i % T == t and sends their requests in order, each machine once per round;
-- the first SKIP lines are left out (fleet.sh's probe sent one). The server accepts each signed request
-- once, so the file must hold enough rounds for the run; past the last, requests are refused
-- (409) and counted as errors. Every request is built once, here, so wrk's own work per request
-- is writing bytes and reading the answer.
-- done() prints one machine-readable line for the script (latencies in microseconds).

local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local file, threads, skip = args[1], tonumber(args[2]), tonumber(args[3] or "0")
  assert(file and threads, "usage: -s checkin.lua URL -- REQUESTS_FILE THREADS")
  local f = assert(io.open(file, "r"))
  local date = f:read("*l")
  local body = f:read("*l")
  local machines = tonumber(f:read("*l"))
  reqs = {}
  local i = 0
  for line in f:lines() do
    if i >= skip and (i % machines) % threads == tid then
      local id, counter, sig = line:match("^(%x+) (%d+) (%x+)$")
      assert(id, "bad line in " .. file .. ": " .. line)
      reqs[#reqs + 1] = wrk.format("POST", "/api/v1/checkin", {
        ["content-type"] = "application/json",
        ["semithin-machine"] = id,
        ["semithin-date"] = date,
        ["semithin-counter"] = counter,
        ["semithin-signature"] = sig,
      }, body)
    end
    i = i + 1
  end
  f:close()
  assert(#reqs > 0, "no requests for thread " .. tid)
  n = 0
end

function request()
  n = n + 1
  if n > #reqs then
    n = 1
  end
  return reqs[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "CHECKIN requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
