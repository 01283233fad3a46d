-- wrk script for every Ferry bench: POSTs a JSON body to the URL and records statuses.
--   wrk -s bench/post.lua URL -- '<body, where {n} becomes a unique number>' ['Header: value' ...]
-- {n} in the body becomes a number unique to the request (so none is a cache hit); without
-- it, every request is the same.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  template = args[1]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  for i = 2, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    if name then
      wrk.headers[name] = value
    end
  end
  counter = 0
  ok = 0
  other = 0
  fixed = not template:find("{n}", 1, true)
  if fixed then
    fixed_request = wrk.format(nil, nil, nil, template)
  end
end

function request()
  if fixed then
    return fixed_request
  end
  counter = counter + 1
  local body = template:gsub("{n}", tostring(id * 1000000000 + counter))
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local ok_total, other_total = 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    other_total = other_total + thread:get("other")
  end
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"duration_us": %d, "requests": %d, "ok": %d, "not_200": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, ok_total, other_total,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
