-- The sandbox every script runs in, built once per Lua runtime (stratacache.resp.scripting).
--
-- It mirrors Redis 7.0's: the globals are read-only ("Attempt to modify a readonly table"),
-- reading an unknown global is an error, loadfile/dofile/print/io/os are absent, binary chunks are
-- refused, and redis.* / cjson / cmsgpack / bit are there. Stock Lua 5.1 has no read-only
-- tables, so every table a script can reach is a proxy whose __newindex refuses, and
-- setmetatable/rawset refuse proxies.
--
-- Scripts run with the sandbox as their environment (setfenv); the runtime's real globals stay
-- as lupa needs them, minus os/io/package/require/dofile/loadfile. The ways a script could
-- reach them are closed: getfenv answers the sandbox for them, setfenv refuses threads and
-- level 0, and loadstring/load give the chunks they compile the sandbox too.
--
-- Argument: py, a table of the Python callables the sandbox is built on.
local py = ...

local type, pairs, ipairs, next, tostring, tonumber = type, pairs, ipairs, next, tostring, tonumber
local rawget, rawset, rawequal, select, unpack = rawget, rawset, rawequal, select, unpack
local error, pcall, xpcall, assert = error, pcall, xpcall, assert
local setmetatable, getmetatable, setfenv, getfenv = setmetatable, getmetatable, setfenv, getfenv
local loadstring, load = loadstring, load
local format, sub, gsub, byte = string.format, string.sub, string.gsub, string.byte
local concat = table.concat
local floor = math.floor
local dbg = debug

local readonly = setmetatable({}, {__mode = "k"})
local user_sources = {["@user_script"] = true, ["@user_function"] = true}
local READONLY = "Attempt to modify a readonly table"

local function refuse()
  error(READONLY, 2)
end

-- A read-only view of `t`. Nested tables are wrapped too, so `string.x = 1` fails as well.
local function protect(t, seen)
  seen = seen or {}
  if seen[t] then return seen[t] end
  local proxy = {}
  seen[t] = proxy
  for k, v in next, t do
    if type(v) == "table" and v ~= t then
      t[k] = protect(v, seen)
    end
  end
  local mt = {__index = t, __newindex = refuse}
  local mt_view = setmetatable({}, {__index = mt, __newindex = refuse, __metatable = false})
  readonly[mt_view] = true
  mt.__metatable = mt_view
  setmetatable(proxy, mt)
  readonly[proxy] = true
  return proxy
end

local function safe_setmetatable(t, m)
  if readonly[t] then error(READONLY, 2) end
  return setmetatable(t, m)
end

local function safe_rawset(t, k, v)
  if readonly[t] then error(READONLY, 2) end
  return rawset(t, k, v)
end

local real_globals = getfenv(0)
local env  -- the sandbox, defined below

local function safe_loadstring(code, name)
  if type(code) == "string" and byte(code, 1) == 27 then
    return nil, "binary chunks are not allowed"
  end
  local f, message = loadstring(code, name)
  if f then setfenv(f, env) end
  return f, message
end

local function safe_getfenv(f)
  local level = f
  if level == nil then level = 1 end
  if type(level) == "number" and level > 0 then level = level + 1 end
  local e = getfenv(level)
  if e == real_globals then return env end
  return e
end

local function safe_setfenv(f, t)
  if type(f) == "number" then
    if f == 0 then error("'setfenv' cannot change the environment of a thread", 2) end
    f = f + 1
  elseif type(f) ~= "function" then
    error("bad argument #1 to 'setfenv' (number expected)", 2)
  end
  if getfenv(f) == real_globals then error("'setfenv' cannot change environment of given object", 2) end
  return setfenv(f, t)
end

local function safe_load(f, name)
  if type(f) == "string" then return safe_loadstring(f, name) end
  local parts = {}
  while true do
    local piece = f()
    if piece == nil or piece == "" then break end
    parts[#parts + 1] = piece
  end
  return safe_loadstring(concat(parts), name)
end

-- ------------------------------------------------------------------ redis.* API

local redis = {}

-- Arguments reach Python unpacked while they are few; past a few thousand (the Lua C stack
-- lupa calls through is limited) they travel packed in a table.
local PACK_ABOVE = 1000

local function call(...)
  local n = select("#", ...)
  local reply, failed
  if n > PACK_ABOVE then
    reply, failed = py.call_packed({...}, n)
  else
    reply, failed = py.call(...)
  end
  if failed then error(reply) end
  return reply
end

local function pcall_redis(...)
  local n = select("#", ...)
  local reply
  if n > PACK_ABOVE then
    reply = py.call_packed({...}, n)
  else
    reply = py.call(...)
  end
  return reply
end

redis.call = call
redis.pcall = pcall_redis
redis.sha1hex = function(...)
  if select("#", ...) ~= 1 then error({err = "ERR wrong number of arguments"}) end
  return py.sha1hex((...))
end
redis.error_reply = function(...)
  local text = ...
  if select("#", ...) ~= 1 or type(text) ~= "string" then
    return {err = "ERR wrong number or type of arguments"}
  end
  if sub(text, 1, 1) == "-" then text = sub(text, 2) end
  local code, rest = text:match("^(%S+) (.*)$")
  if not code then code, rest = "ERR", text end
  rest = gsub(gsub(rest, "\r\n$", ""), "[\r\n]+$", "")
  return {err = code .. " " .. rest}
end
redis.status_reply = function(...)
  local text = ...
  if select("#", ...) ~= 1 or type(text) ~= "string" then
    return {err = "ERR wrong number or type of arguments"}
  end
  return {ok = text}
end
redis.log = function(...)
  local n = select("#", ...)
  if n < 2 then error({err = "ERR redis.log() requires two arguments or more."}) end
  local level = ...
  if type(level) ~= "number" then
    error({err = "ERR First argument must be a number (log level)."})
  end
  if level < 0 or level > 3 then error({err = "ERR Invalid debug level."}) end
  local parts = {}
  for i = 2, n do
    local v = select(i, ...)
    if type(v) == "string" or type(v) == "number" then parts[#parts + 1] = tostring(v) end
  end
  py.log(level, concat(parts, " "))
end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
redis.setresp = function(...)
  if select("#", ...) ~= 1 then error({err = "ERR redis.setresp() requires one argument."}) end
  local v = tonumber((...))
  if v ~= 2 and v ~= 3 then error({err = "ERR RESP version must be 2 or 3."}) end
  py.setresp(v)
end
redis.set_repl = function(...)
  if select("#", ...) ~= 1 then error({err = "ERR redis.set_repl() requires two arguments."}) end
  local flags = tonumber((...)) or -1
  if flags < 0 or flags > 3 or flags ~= floor(flags) then
    error({err = "ERR Invalid replication flags. Use REPL_AOF, REPL_REPLICA, REPL_ALL or REPL_NONE."})
  end
end
redis.replicate_commands = function() return true end
redis.breakpoint = function() return false end
redis.debug = function() end
redis.acl_check_cmd = function(...)
  if select("#", ...) == 0 then
    error({err = "ERR Please specify at least one argument for this redis lib call"})
  end
  if not py.is_command(...) then
    error({err = "ERR Invalid command passed to redis.acl_check_cmd()"})
  end
  return true
end
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE, redis.REPL_REPLICA, redis.REPL_ALL = 0, 1, 2, 2, 3
redis.REDIS_VERSION = py.version
redis.REDIS_VERSION_NUM = py.version_num

-- ------------------------------------------------------------------ libraries

local function py_library(names)
  local lib = {}
  for _, name in ipairs(names) do lib[name] = py[name] end
  return lib
end

local cjson = {
  encode = py.cjson_encode,
  decode = py.cjson_decode,
  encode_keep_buffer = function() return true end,
  encode_max_depth = py.cjson_encode_max_depth,
  decode_max_depth = py.cjson_decode_max_depth,
  encode_invalid_numbers = py.cjson_encode_invalid_numbers,
  decode_invalid_numbers = function() return true end,
  encode_number_precision = function() return 14 end,
  encode_sparse_array = function() return false, 2, 10 end,
  null = py.cjson_null,
}
local bit = py_library({"tobit", "tohex", "bnot", "band", "bor", "bxor", "lshift", "rshift",
                        "arshift", "rol", "ror", "bswap"})
local cmsgpack = {
  pack = py.msgpack_pack,
  unpack = function(data) return unpack(py.msgpack_unpack(data, 0, 0)) end,
  unpack_one = function(data, offset) return unpack(py.msgpack_unpack(data, 1, offset or 0, true)) end,
  unpack_limit = function(data, limit, offset)
    return unpack(py.msgpack_unpack(data, limit or 0, offset or 0, true))
  end,
}

local math_lib = {}
for k, v in next, math do math_lib[k] = v end
math_lib.random = function(...)
  local n = select("#", ...)
  local r = py.random()
  if n == 0 then return r end
  local lo, hi = 1, nil
  if n == 1 then hi = floor(tonumber((...)) or error("bad argument #1 to 'random' (number expected)"))
  elseif n == 2 then
    lo = floor(tonumber((...)) or error("bad argument #1 to 'random' (number expected)"))
    hi = floor(tonumber((select(2, ...))) or error("bad argument #2 to 'random' (number expected)"))
  else error("wrong number of arguments") end
  if lo > hi then error("bad argument #" .. n .. " to 'random' (interval is empty)") end
  return floor(r * (hi - lo + 1)) + lo
end
math_lib.randomseed = function(seed) py.randomseed(tonumber(seed) or 0) end

local string_lib, table_lib, coroutine_lib = {}, {}, {}
for k, v in next, string do string_lib[k] = v end
for k, v in next, table do table_lib[k] = v end
for k, v in next, coroutine do coroutine_lib[k] = v end

-- Redis 7 keeps pcall working for scripts written for Redis 6: an error table is handed back
-- as its message.
local function script_pcall(f, ...)
  local packed = {pcall(f, ...)}
  if not packed[1] and type(packed[2]) == "table" then
    local message = rawget(packed[2], "err")
    if type(message) == "string" then packed[2] = message end
  elseif not packed[1] and type(packed[2]) == "userdata" then
    local message = py.error_text(packed[2])
    if message then packed[2] = message end
  end
  return unpack(packed, 1, table.maxn(packed))
end

-- ------------------------------------------------------------------ globals

local base = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = script_pcall, rawequal = rawequal, rawget = rawget, rawset = safe_rawset,
  select = select, setmetatable = safe_setmetatable, getmetatable = getmetatable,
  tonumber = tonumber, tostring = tostring, type = type, unpack = unpack, xpcall = xpcall,
  loadstring = safe_loadstring, load = safe_load, gcinfo = gcinfo,
  collectgarbage = collectgarbage, getfenv = safe_getfenv, setfenv = safe_setfenv,
  newproxy = newproxy,
  _VERSION = _VERSION,
  string = string_lib, table = table_lib, math = math_lib, coroutine = coroutine_lib,
  cjson = cjson, bit = bit, cmsgpack = cmsgpack, redis = redis,
}
for k, v in next, base do
  if type(v) == "table" then base[k] = protect(v) end
end

-- During FUNCTION LOAD the library's top level sees only this: redis.register_function & co.
local library_redis = {
  register_function = py.register_function,
  log = redis.log,
  LOG_DEBUG = 0, LOG_VERBOSE = 1, LOG_NOTICE = 2, LOG_WARNING = 3,
  REDIS_VERSION = py.version, REDIS_VERSION_NUM = py.version_num,
}
local library_redis_view = setmetatable({}, {
  __index = function(_, key)
    local value = rawget(library_redis, key)
    if value == nil then
      error("Script attempted to access nonexistent global variable '" .. tostring(key) .. "'", 2)
    end
    return value
  end,
  __newindex = refuse,
  __metatable = false,
})
readonly[library_redis_view] = true
local library_api = {redis = library_redis_view}
local current = base

env = {}
local env_mt = {
  __index = function(_, key)
    local value = rawget(current, key)
    if value == nil then
      error("Script attempted to access nonexistent global variable '" .. tostring(key) .. "'", 2)
    end
    return value
  end,
  __newindex = refuse,
}
local env_mt_view = setmetatable({}, {__index = env_mt, __newindex = refuse, __metatable = false})
readonly[env_mt_view] = true
env_mt.__metatable = env_mt_view
setmetatable(env, env_mt)
readonly[env] = true
rawset(base, "_G", env)

-- ------------------------------------------------------------------ running

local function error_handler(err)
  local level, info = 2, nil
  while true do
    info = dbg.getinfo(level, "nSl")
    if info == nil or user_sources[info.source] then break end
    level = level + 1
  end
  if type(err) == "userdata" then
    local message = py.error_text(err)
    if message then err = {err = message} end
  end
  if type(err) ~= "table" then err = {err = "ERR " .. tostring(err)} end
  if info then
    err.source = info.source
    err.line = info.currentline
  end
  return err
end

local KILLED = "ERR Script killed: it ran longer than strata-script-time-limit"

-- Only code the user wrote is interrupted; the sandbox's own code always runs to its end.
local function in_user_code()
  local info = dbg.getinfo(3, "S")
  return info ~= nil and user_sources[info.source] == true
end

-- Once over time, fail on every line of user code: a script that swallows the error with
-- pcall in a loop reaches a line outside the pcall soon after, and stops there (Redis's
-- SCRIPT KILL does the same).
local kill_message = KILLED

local function killing_hook()
  if in_user_code() then error({err = kill_message}) end
end

-- py.expired() answers true past the time limit, or the error text after SCRIPT KILL; while
-- the server is busy it also serves the other clients (BUSY replies, SCRIPT KILL).
local function deadline_hook()
  local verdict = py.expired()
  if verdict and in_user_code() then
    kill_message = verdict == true and KILLED or verdict
    dbg.sethook(killing_hook, "l")
    error({err = kill_message})
  end
end

-- Encoding the reply to RESP here, with raw access only (a metatable cannot run code while the
-- reply is built), mirrors Redis's luaReplyToRedisReply.
local MAX_DEPTH = 1000

local function null_of(resp) return resp == 3 and "_\r\n" or "$-1\r\n" end

local function bulk(s) return "$" .. #s .. "\r\n" .. s .. "\r\n" end

local function double_of(d, resp)
  local text
  if d == 1/0 then text = "inf" elseif d == -1/0 then text = "-inf" else text = format("%.17g", d) end
  if resp == 3 then return "," .. text .. "\r\n" end
  return bulk(text)
end

local emit

emit = function(out, v, resp, script_resp, depth)
  if depth > MAX_DEPTH then
    out[#out + 1] = "-ERR reached lua stack limit\r\n"
    return
  end
  local t = type(v)
  if t == "string" then
    out[#out + 1] = bulk(v)
  elseif t == "number" then
    out[#out + 1] = ":" .. format("%d", v) .. "\r\n"
  elseif t == "boolean" then
    if script_resp == 2 then
      out[#out + 1] = v and ":1\r\n" or null_of(resp)
    elseif resp == 2 then
      out[#out + 1] = v and ":1\r\n" or ":0\r\n"
    else
      out[#out + 1] = v and "#t\r\n" or "#f\r\n"
    end
  elseif t == "table" then
    local e = rawget(v, "err")
    if type(e) == "string" then
      out[#out + 1] = "-" .. gsub(e, "[\r\n]", " ") .. "\r\n"
      return
    end
    local ok = rawget(v, "ok")
    if type(ok) == "string" then
      out[#out + 1] = "+" .. gsub(ok, "[\r\n]", " ") .. "\r\n"
      return
    end
    local d = rawget(v, "double")
    if type(d) == "number" then
      out[#out + 1] = double_of(d, resp)
      return
    end
    local big = rawget(v, "big_number")
    if type(big) == "string" then
      big = gsub(big, "[\r\n]", " ")
      out[#out + 1] = resp == 3 and ("(" .. big .. "\r\n") or bulk(big)
      return
    end
    local verbatim = rawget(v, "verbatim_string")
    if type(verbatim) == "table" then
      local fmt, str = rawget(verbatim, "format"), rawget(verbatim, "string")
      if type(fmt) == "string" and type(str) == "string" then
        if resp == 3 then
          out[#out + 1] = "=" .. (#str + 4) .. "\r\n" .. sub(fmt, 1, 3) .. ":" .. str .. "\r\n"
        else
          out[#out + 1] = bulk(str)
        end
        return
      end
    end
    local map = rawget(v, "map")
    if type(map) == "table" then
      local header = #out + 1
      out[header] = ""
      local n = 0
      local k, val = next(map)
      while k ~= nil do
        emit(out, k, resp, script_resp, depth + 1)
        emit(out, val, resp, script_resp, depth + 1)
        n = n + 1
        k, val = next(map, k)
      end
      out[header] = resp == 3 and ("%" .. n .. "\r\n") or ("*" .. (2 * n) .. "\r\n")
      return
    end
    local set = rawget(v, "set")
    if type(set) == "table" then
      local header = #out + 1
      out[header] = ""
      local n = 0
      local k = next(set)
      while k ~= nil do
        emit(out, k, resp, script_resp, depth + 1)
        n = n + 1
        k = next(set, k)
      end
      out[header] = resp == 3 and ("~" .. n .. "\r\n") or ("*" .. n .. "\r\n")
      return
    end
    local header = #out + 1
    out[header] = ""
    local j = 1
    while true do
      local item = rawget(v, j)
      if item == nil then break end
      emit(out, item, resp, script_resp, depth + 1)
      j = j + 1
    end
    out[header] = "*" .. (j - 1) .. "\r\n"
  else
    out[#out + 1] = null_of(resp)
  end
end

-- The error reply of a failed script, and whether the error was already counted (a command
-- error re-raised by redis.call is counted once, when the command failed).
local function format_error(e, funcname)
  if type(e) ~= "table" then
    return "ERR Error running script " .. funcname .. ", " .. sub(tostring(e), 1, 100), false
  end
  local message = rawget(e, "err")
  if type(message) ~= "string" then message = "ERR " .. tostring(message) end
  local source, line = rawget(e, "source"), rawget(e, "line")
  if line ~= nil and source ~= nil then
    message = message .. " script: " .. funcname .. ", on " .. tostring(source) .. ":" .. tostring(line) .. "."
  end
  return message, rawget(e, "ignore_error_stats_update") == true
end

local function array_of(list)
  local t = {}
  for i = 1, #list do t[i] = list[i] end
  return t
end

local engine = {}

-- Compile a script body; returns the function, or nil and the compiler's message.
function engine.compile(body, chunkname)
  local f, message = loadstring(body, chunkname)
  if not f then return nil, message end
  setfenv(f, env)
  return f, false
end

-- Run `f` (an EVAL body, or a registered function when `as_function`), returning
-- (true, resp_bytes) or (false, error_text).
local runs = 0

function engine.run(f, keys, args, resp, funcname, as_function, time_limited)
  -- As Redis does: a step of garbage collection every 50 runs keeps the heap near its floor.
  runs = runs + 1
  if runs % 50 == 0 then collectgarbage("step", 50) end
  local keys_t, args_t = array_of(keys), array_of(args)
  if not as_function then
    rawset(base, "KEYS", keys_t)
    rawset(base, "ARGV", args_t)
  end
  local ok, result
  if time_limited then dbg.sethook(deadline_hook, "", 100000) end
  if as_function then
    ok, result = xpcall(function() return f(keys_t, args_t) end, error_handler)
  else
    ok, result = xpcall(f, error_handler)
  end
  dbg.sethook()
  if not ok then
    local message, counted = format_error(result, funcname)
    return false, message, counted
  end
  local out = {}
  emit(out, result, resp, py.script_resp(), 1)
  return true, concat(out), false
end

-- Run a library's top-level code with only the library API visible.
function engine.load_library(body)
  local f, message = loadstring(body, "@user_function")
  if not f then return false, "Error compiling function: " .. tostring(message) end
  setfenv(f, env)
  current = library_api
  dbg.sethook(deadline_hook, "", 100000)
  local ok, result = pcall(f)
  dbg.sethook()
  current = base
  if not ok then
    local message = result
    if type(result) == "table" then
      message = rawget(result, "err")
    else
      message = "ERR " .. tostring(result)
    end
    return false, "Error registering functions: " .. tostring(message)
  end
  return true, false
end

engine.reset = function() dbg.sethook() current = base end
engine.new_table = function() return {} end
engine.table_type = function(v) return type(v) end

for _, name in ipairs({"os", "io", "package", "require", "dofile", "loadfile", "print", "module"}) do
  rawset(real_globals, name, nil)
end
return engine
