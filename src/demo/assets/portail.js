/* Scripts du portail – compatibles Internet Explorer 8 */
(function () {
  "use strict";
  function horodatage() {
    var d = new Date();
    var jours = ["dimanche", "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi"];
    return jours[d.getDay()] + " " + d.toLocaleDateString("fr-FR");
  }
  function init() {
    var pied = document.getElementsByTagName("footer")[0];
    if (pied) {
      pied.appendChild(document.createTextNode(" – " + horodatage()));
    }
    var liens = document.querySelectorAll("a.bouton");
    for (var i = 0; i < liens.length; i++) {
      liens[i].addEventListener("click", function () {
        this.textContent = "Connexion en cours…";
      });
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
