-- Full milter session driven by OpenDKIM's miltertest (MTA side).
--
--   MILTER_SPEC=inet:10026@127.0.0.1 miltertest -s session.lua
--   (or: miltertest -D MILTER_SPEC=unix:/path/milter.sock -s session.lua)
--
-- negotiate -> connect -> helo -> mail -> rcpt -> unknown -> data ->
-- 3 headers -> eoh -> body -> eom -> quit, with macros for connect, mail,
-- rcpt and data.  Every step must be answered with SMFIR_CONTINUE (eom:
-- continue or accept); anything else fails.
-- miltertest exit status: 0 = passed, 1 = failed (reason on stderr).

local conn

local function fail(msg)
	error(msg, 0)
end

local function reply_name(r)
	if r == 0 then
		return "none"
	end
	return string.format("'%s'", string.char(math.floor(r)))
end

-- check the result of one mt.* step, then require one of the given replies
local function step(what, ret, ...)
	if ret ~= nil then
		fail(what .. " failed: " .. tostring(ret))
	end
	local got = mt.getreply(conn)
	for _, want in ipairs({...}) do
		if got == want then
			mt.echo(what .. ": " .. reply_name(got))
			return got
		end
	end
	fail(what .. ": unexpected reply " .. reply_name(got))
end

local function macro(...)
	local ret = mt.macro(conn, ...)
	if ret ~= nil then
		fail("mt.macro() failed: " .. tostring(ret))
	end
end

local function run()
	local spec = os.getenv("MILTER_SPEC") or MILTER_SPEC
	if spec == nil or spec == "" then
		fail("MILTER_SPEC is not set (e.g. inet:10026@127.0.0.1)")
	end

	mt.set_timeout(10)
	-- retries for up to ~5 s while the milter starts listening
	conn = mt.connect(spec, 50, 0.1)
	if conn == nil then
		fail("mt.connect(" .. spec .. ") failed")
	end

	-- nil, nil, nil: offer miltertest's defaults (version 6, actions 0x1ff,
	-- steps 0x1fffff).  The milter must not ask to skip any step.
	if mt.negotiate(conn, nil, nil, nil) ~= nil then
		fail("mt.negotiate() failed")
	end
	for name, bit in pairs({
		NOCONNECT = SMFIP_NOCONNECT, NOHELO = SMFIP_NOHELO,
		NOMAIL = SMFIP_NOMAIL, NORCPT = SMFIP_NORCPT,
		NOUNKNOWN = SMFIP_NOUNKNOWN, NODATA = SMFIP_NODATA,
		NOHDRS = SMFIP_NOHDRS, NOEOH = SMFIP_NOEOH, NOBODY = SMFIP_NOBODY,
	}) do
		if mt.test_option(conn, bit) then
			fail("milter negotiated SMFIP_" .. name .. "; a full session needs every step")
		end
	end
	mt.echo("negotiate: ok")

	macro(SMFIC_CONNECT, "j", "mail.example.com", "{daemon_name}", "miltertest")
	step("connect", mt.conninfo(conn, "client.example.net", "192.0.2.10"),
	     SMFIR_CONTINUE)

	step("helo", mt.helo(conn, "client.example.net"), SMFIR_CONTINUE)

	macro(SMFIC_MAIL, "i", "4ABCDE0123", "{mail_addr}", "sender@example.com")
	step("mail", mt.mailfrom(conn, "<sender@example.com>"), SMFIR_CONTINUE)

	macro(SMFIC_RCPT, "{rcpt_addr}", "receiver@example.org",
	      "{rcpt_host}", "example.org", "{rcpt_mailer}", "smtp")
	step("rcpt", mt.rcptto(conn, "<receiver@example.org>"), SMFIR_CONTINUE)

	step("unknown", mt.unknown(conn, "HELP"), SMFIR_CONTINUE)

	-- miltertest exports no SMFIC_DATA; 'T' is the DATA command byte
	macro(string.byte("T"), "i", "4ABCDE0123")
	step("data", mt.data(conn), SMFIR_CONTINUE)

	step("header From", mt.header(conn, "From", "<sender@example.com>"), SMFIR_CONTINUE)
	step("header To", mt.header(conn, "To", "<receiver@example.org>"), SMFIR_CONTINUE)
	step("header Subject", mt.header(conn, "Subject", "miltertest session"), SMFIR_CONTINUE)
	step("eoh", mt.eoh(conn), SMFIR_CONTINUE)

	step("body", mt.bodystring(conn, "Hello from miltertest.\r\nSecond line.\r\n"),
	     SMFIR_CONTINUE)

	step("eom", mt.eom(conn), SMFIR_CONTINUE, SMFIR_ACCEPT)

	mt.disconnect(conn)
	mt.echo("session: passed")
end

-- miltertest 1.6.0 (Debian 12) drops the message of a Lua error and only
-- exits 1, so print the reason ourselves before failing.
local ok, err = pcall(run)
if not ok then
	io.stderr:write("FAIL: " .. tostring(err) .. "\n")
	error(err, 0)
end
