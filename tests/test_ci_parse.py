"""``ci.answer_dict`` gives CI's XML answers the shape the SDK's ``xml_to_dict`` gives them
(the pipeline was written against that shape), without the SDK's ``eval`` round trip."""

from __future__ import annotations

from xml.etree.ElementTree import ParseError

import pytest
from qcloud_cos.cos_comm import xml_to_dict

from asrd.ci import answer_dict, classify

FINISHED = """<Response>
  <JobsDetail>
    <Code>Success</Code>
    <CreationTime>2020-08-20T17:43:01+0800</CreationTime>
    <Input><Object>16k.mp3</Object></Input>
    <JobId>s8988119ee2c911eab2cdd3817d4d5e64</JobId>
    <Message/>
    <Operation>
      <Output><Bucket>examplebucket-1250000000</Bucket><Object>music.txt</Object></Output>
      <SpeechRecognitionResult>
        <AudioTime>30.12</AudioTime>
        <Result>[0:0.000,0:30.080] 这是一条语音测试信息。展示的是识别后的文本内容</Result>
        <Result> second part, spaces kept </Result>
        <ResultDetail/>
      </SpeechRecognitionResult>
    </Operation>
    <State>Success</State>
  </JobsDetail>
  <JobsDetail>
    <Code>Failed</Code><JobId>s0000000000000000000000000000000b</JobId><State>Failed</State>
    <Operation><SpeechRecognitionResult><ResultDetail><SentenceId>0</SentenceId>
      <Words><Word>a</Word></Words><Words><Word>b</Word></Words></ResultDetail>
      <ResultDetail><SentenceId>1</SentenceId></ResultDetail></SpeechRecognitionResult></Operation>
  </JobsDetail>
  <NonExistJobIds>s1111111111111111111111111111111c</NonExistJobIds>
  <NonExistJobIds>s2222222222222222222222222222222d</NonExistJobIds>
</Response>"""

ANSWERS = {
    "two jobs, repeated elements, empty leaves": FINISHED,
    "one job (a dict, not a list)": "<Response><JobsDetail><JobId>s1</JobId><State>Running"
    "</State></JobsDetail></Response>",
    "only unknown ids": "<Response><NonExistJobIds>s9</NonExistJobIds></Response>",
    "an empty answer": "<Response/>",
    "attributes and a namespace": '<Response xmlns="http://www.qcloud.com/document/product/436'
    '/7751" a="1"><Key b="2">text</Key><Key b="3"/><Plain>x</Plain></Response>',
    "an error answer": "<Error><Code>NoSuchKey</Code><Message>no such job</Message>"
    "<RequestId>NjE=</RequestId></Error>",
}


@pytest.mark.parametrize("xml", ANSWERS.values(), ids=list(ANSWERS))
def test_answer_dict_matches_the_sdks_mapping(xml: str) -> None:
    assert answer_dict(xml.encode()) == xml_to_dict(xml.encode())


def test_answer_dict_keeps_text_as_ci_sent_it() -> None:
    detail = answer_dict(FINISHED.encode())["JobsDetail"][0]
    result = detail["Operation"]["SpeechRecognitionResult"]["Result"]
    assert result[1] == " second part, spaces kept "
    assert detail["Message"] is None


def test_answer_dict_refuses_a_dtd_as_a_transient_bad_response() -> None:
    bomb = b'<!DOCTYPE r [<!ENTITY a "aaaa">]><Response><X>&a;</X></Response>'
    with pytest.raises(ParseError, match="DTD") as err:
        answer_dict(bomb)
    assert (classify(err.value).code, classify(err.value).transient) == ("BadResponse", True)
