{
  "capgate-signature": 1,
  "payloadType": "application/vnd.capgate.artifact.v1+json",
  "sha256": "21c7535c9aa995175a2e38c5cd6ef3362106fee94c5b5cf2453ea57cb1cdd015",
  "size": 251335,
  "signatures": [
    {
      "keyid": "469d5097c5a94b72c1a73542eb4f5486f33d43f018326dc64a96808cd06ab19e",
      "sig": "4iYgi2gV0hBy18+SkS5mdRTwzo7oJd81X0dbx+6S4dO7MdMum3OkfLIYVaWXvl6+VfcSzN0GiSFomQQ908OlBw=="
    }
  ]
}
