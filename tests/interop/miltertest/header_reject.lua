-- Drives tests/interop/milters/pymilter_header_reject.py (MTA side):
--   RCPT <reject@example.org> -> SMFIR_REPLYCODE (550 5.7.1 ...)
--   RCPT <ok@example.org>     -> SMFIR_CONTINUE
--   EOM                       -> continue/accept + add header X-Pymilter: checked
--
--   MILTER_SPEC=inet:PORT@127.0.0.1 miltertest -s header_reject.lua
--
-- miltertest keeps only the reply *code* of a RCPT reply, not its text;
-- selfcheck.sh checks "550 5.7.1 Recipient rejected by pymilter" on the wire.
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
	if not mt.test_action(conn, SMFIF_ADDHDRS) then
		fail("milter did not negotiate SMFIF_ADDHDRS")
	end
	mt.echo("negotiate: ADDHDRS ok")

	step("connect", mt.conninfo(conn, "client.example.net", "192.0.2.10"), SMFIR_CONTINUE)
	step("helo", mt.helo(conn, "client.example.net"), SMFIR_CONTINUE)
	step("mail", mt.mailfrom(conn, "<sender@example.com>"), SMFIR_CONTINUE)
	step("rcpt reject", mt.rcptto(conn, "<reject@example.org>"), SMFIR_REPLYCODE)
	step("rcpt ok", mt.rcptto(conn, "<ok@example.org>"), SMFIR_CONTINUE)
	step("data", mt.data(conn), SMFIR_CONTINUE)
	step("header From", mt.header(conn, "From", "<sender@example.com>"), SMFIR_CONTINUE)
	step("header To", mt.header(conn, "To", "<ok@example.org>"), SMFIR_CONTINUE)
	step("header Subject", mt.header(conn, "Subject", "pymilter check"), SMFIR_CONTINUE)
	step("eoh", mt.eoh(conn), SMFIR_CONTINUE)
	step("body", mt.bodystring(conn, "Hello.\r\n"), SMFIR_CONTINUE)
	step("eom", mt.eom(conn), SMFIR_CONTINUE, SMFIR_ACCEPT)

	if not mt.eom_check(conn, MT_HDRADD, "X-Pymilter", "checked") then
		fail("eom: no add-header X-Pymilter: checked")
	end
	if mt.getheader(conn, "X-Pymilter", 0) ~= "checked" then
		fail("eom: mt.getheader(X-Pymilter, 0) is not \"checked\"")
	end
	mt.echo("eom: add-header X-Pymilter: checked")

	mt.disconnect(conn)
	mt.echo("header_reject: passed")
end

-- miltertest 1.6.0 (Debian 12) drops the message of a Lua error and only
-- exits 1, so print the reason ourselves before failing.
local ok, err = pcall(run)
if not ok then
	io.stderr:write("FAIL: " .. tostring(err) .. "\n")
	error(err, 0)
end
