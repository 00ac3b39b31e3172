-- wrk script for bench/latency.py: each connection waits PACED_DELAY_MS
-- between requests, so C connections send about C * 1000 / PACED_DELAY_MS
-- requests a second whatever the server's speed (wrk rounds a delay down to
-- whole milliseconds: the fraction is dithered so that the mean is right).
local d = tonumber(os.getenv("PACED_DELAY_MS") or "10")
local whole = math.floor(d)
local frac = d - whole

function delay()
   if math.random() < frac then
      return whole + 1
   end
   return whole
end
