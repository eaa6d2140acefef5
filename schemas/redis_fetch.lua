-- Fetch-and-reserve, in one server-side step: pop the next message of the first non-empty
-- queue list and record it as unacknowledged (kombu's `unacked` hash and its index) before
-- the reply leaves Redis, so that no instant exists at which the message is in neither.
-- (kombu's own BRPOP path records it only after the reply is decoded in the worker: a
-- worker killed in between loses the message; kombu#305, celery#7924.)
--
-- KEYS[1..n]       the queue lists to try, in the order BRPOP would (priority, then queue)
-- KEYS[n+1..2n]    the doorbell of each list's queue (a data-free list, capped at one item)
-- KEYS[2n+1]       the unacked hash: delivery tag -> [message, exchange, routing key]
-- KEYS[2n+2]       the unacked index: delivery tag -> time recorded (the lease)
-- KEYS[2n+3]       the dead-letter list, for an item that is not a kombu message at all
-- ARGV[1]          n
-- ARGV[2]          now, by the consumer's clock (kombu's restore sweep uses the same clock)
-- ARGV[3]          the dead-letter queue's name
-- Returns {list key, message} or {'parked', list key} or false when every list is empty.
local n = tonumber(ARGV[1])
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    if redis.call('LLEN', KEYS[i]) > 0 then
      -- More waits: keep the doorbell rung, so the next idle consumer wakes at once.
      redis.call('LPUSH', KEYS[n + i], '1')
      redis.call('LTRIM', KEYS[n + i], 0, 0)
    end
    local ok, message = pcall(cjson.decode, item)
    local tag, exchange, routing_key
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      tag = message.properties.delivery_tag
      local info = message.properties.delivery_info
      if type(info) == 'table' then
        exchange = info.exchange
        routing_key = info.routing_key
      end
    end
    if type(tag) ~= 'string' or tag == '' then
      -- Not a kombu message: nothing could ever acknowledge it. Park it whole, with why.
      local body = cjson.encode({
        reason = 'not a kombu message (no properties.delivery_tag): see the README on '
          .. 'what a non-Python Celery client must send',
        source = 'redis',
        queue = KEYS[i],
        payload = item,
      })
      local parked = cjson.encode({
        body = body,
        ['content-encoding'] = 'utf-8',
        ['content-type'] = 'application/json',
        headers = {reason = 'not a kombu message'},
        properties = {
          delivery_tag = 'parked-' .. redis.sha1hex(item) .. '-' .. ARGV[2],
          delivery_info = {exchange = '', routing_key = ARGV[3]},
          priority = 0,
        },
      })
      redis.call('LPUSH', KEYS[2 * n + 3], parked)
      return {'parked', KEYS[i]}
    end
    if type(exchange) ~= 'string' then exchange = '' end
    if type(routing_key) ~= 'string' then routing_key = '' end
    -- The message text is kept byte for byte: re-encoding it could change its numbers.
    redis.call('HSET', KEYS[2 * n + 1], tag,
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    redis.call('ZADD', KEYS[2 * n + 2], ARGV[2], tag)
    return {KEYS[i], item}
  end
end
return false
