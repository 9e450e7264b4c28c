-- Drives examples/recipient_policy.py served by milter-run (MTA side):
--   negotiation asks only for RCPT and EOM (the other stages: skip and no-reply bits)
--   RCPT <former@example.test> -> SMFIR_REPLYCODE (550 5.1.1 ...)
--   RCPT <alice@example.test>  -> SMFIR_CONTINUE
--   EOM                        -> continue + add header X-Recipients-Checked: alice@example.test
--
--   MILTER_SPEC=inet:PORT@127.0.0.1 miltertest -s recipient_policy.lua
-- miltertest exit status: 0 = passed, 1 = failed (reason on stderr).

local conn

local function fail(msg)
	error(msg, 0)
end

local function step(what, ret, want)
	if ret ~= nil then
		fail(what .. " failed: " .. tostring(ret))
	end
	local got = mt.getreply(conn)
	if got ~= want then
		fail(what .. ": unexpected reply " .. string.format("%d", got))
	end
	mt.echo(what .. ": ok")
end

local function run()
	local spec = os.getenv("MILTER_SPEC") or MILTER_SPEC
	if spec == nil or spec == "" then
		fail("MILTER_SPEC is not set (e.g. inet:10026@127.0.0.1)")
	end
	mt.set_timeout(10)
	conn = mt.connect(spec, 50, 0.1)
	if conn == nil then
		fail("mt.connect(" .. spec .. ") failed")
	end
	if mt.negotiate(conn, nil, nil, nil) ~= nil then
		fail("mt.negotiate() failed")
	end
	for _, skipped in ipairs({SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NOHDRS, SMFIP_NOEOH,
	                          SMFIP_NOBODY, SMFIP_NOUNKNOWN, SMFIP_NODATA}) do
		if not mt.test_option(conn, skipped) then
			fail("a stage the example does not implement was negotiated: " .. tostring(skipped))
		end
	end
	if mt.test_option(conn, SMFIP_NORCPT) then
		fail("RCPT was not negotiated")
	end
	mt.echo("negotiate: RCPT and EOM only")

	-- the stages negotiated away are not sent (miltertest refuses to send them)
	step("rcpt closed", mt.rcptto(conn, "<former@example.test>"), SMFIR_REPLYCODE)
	step("rcpt open", mt.rcptto(conn, "<alice@example.test>"), SMFIR_CONTINUE)
	step("eom", mt.eom(conn), SMFIR_CONTINUE)
	if not mt.eom_check(conn, MT_HDRADD, "X-Recipients-Checked", "alice@example.test") then
		fail("eom: no add-header X-Recipients-Checked: alice@example.test")
	end
	mt.echo("eom: add-header X-Recipients-Checked: alice@example.test")
	mt.disconnect(conn)
	mt.echo("recipient_policy: passed")
end

-- miltertest 1.6.0 (Debian 12) drops the message of a Lua error and only exits 1: print it first.
local ok, err = pcall(run)
if not ok then
	io.stderr:write("FAIL: " .. tostring(err) .. "\n")
	error(err, 0)
end
