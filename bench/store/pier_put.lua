-- wrk script: PUT a fresh key per request to pier's KV API.
local counter = 0
local thread_id = 0
local value = string.rep("v", 64)

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function request()
  counter = counter + 1
  local path = string.format("/api/v1/kv/bench/%d/%d", tid or 0, counter)
  return wrk.format("PUT", path, {["Content-Type"] = "application/octet-stream"}, value)
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("non-200: " .. status .. "\n")
  end
end
