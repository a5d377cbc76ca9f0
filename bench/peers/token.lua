-- wrk script for POST /token with client_secret_basic: every response is
-- checked (status 200 and "access_token" in the body); done() prints one
-- machine-readable RESULT line. Set by run.sh through the environment:
-- BENCH_AUTH (the Authorization header value), BENCH_BODY (the form body).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

ok = 0
bad = 0
first_bad = nil

function response(status, headers, body)
  if status == 200 and body and string.find(body, '"access_token"', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    if first_bad == nil then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

function done(summary, latency, requests)
  local good, failed, sample = 0, 0, nil
  for _, thread in ipairs(threads) do
    good = good + thread:get("ok")
    failed = failed + thread:get("bad")
    sample = sample or thread:get("first_bad")
  end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT ok=%d bad=%d socket_errors=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f seconds=%.3f\n",
    good, failed, e.connect + e.read + e.write + e.timeout, good / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, seconds))
  if sample then
    io.write("FIRST_BAD " .. sample:gsub("\n", " ") .. "\n")
  end
end
